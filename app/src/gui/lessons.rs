//! The lessons: one guided walkthrough per source document, each a few steps of explanation,
//! a "Do it" that fills in and runs the panels, and the question the document asks there. The
//! content is data; `lessons_panel` shows it and posts each step's action to the panels.

use neoscope_api::words::TrainConfig;

use super::lens_panel::Stat;

/// What a step's "Do it" asks the panels to do (delivered as `Message::Lesson`; each panel
/// handles its own actions).
#[derive(Debug, Clone, PartialEq)]
pub enum Do {
    /// From scratch: train a new tiny transformer for this many steps.
    Scratch {
        /// Optimiser steps.
        steps: usize,
    },
    /// Playground: generate greedily from a prompt.
    Generate {
        /// Prompt.
        prompt: &'static str,
        /// Tokens.
        max_new_tokens: usize,
    },
    /// Lens: run on prompt lines (`PROMPT => TARGET` for a prompt's own target).
    Lens {
        /// Prompt lines.
        prompts: &'static str,
        /// Target of the lines without their own.
        target: &'static str,
        /// Heatmap colouring.
        stat: Stat,
    },
    /// Lens: train a tuned lens on the shipped corpus for this many steps.
    TunedLens {
        /// Optimiser steps.
        steps: usize,
    },
    /// Words: create a word, put a shipped dataset in its table and train it.
    Word {
        /// Name.
        name: &'static str,
        /// Shipped dataset name.
        data: &'static str,
        /// Recipe.
        config: TrainConfig,
    },
    /// Words: ask the model what the word means.
    Define(&'static str),
    /// Words: the new-example prompts.
    NewExamples(&'static str),
    /// Words: cosines with the similarity list.
    Similar(&'static str),
    /// Compare: two words side by side with the punchline preference.
    Compare(&'static str, &'static str),
    /// MFA: collect activations at the default layer from the shipped corpus.
    MfaCollect,
    /// MFA: fit with this many epochs.
    MfaFit {
        /// Epochs.
        epochs: usize,
    },
    /// Vocabulary injection: run the panel's demo injection.
    Inject,
}

impl Do {
    /// The panel that carries it out (the lesson switches to it).
    pub fn panel(&self) -> &'static str {
        match self {
            Self::Scratch { .. } => "From scratch",
            Self::Generate { .. } => "Playground",
            Self::Lens { .. } | Self::TunedLens { .. } => "Lens",
            Self::Word { .. } | Self::Define(_) | Self::NewExamples(_) | Self::Similar(_) => {
                "Words"
            }
            Self::Compare(..) => "Compare",
            Self::MfaCollect | Self::MfaFit { .. } => "MFA",
            Self::Inject => "Injection",
        }
    }
}

/// One step of a lesson.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// Short title.
    pub title: &'static str,
    /// Two or three sentences of explanation.
    pub text: &'static str,
    /// What "Do it" does; `None` for a step done by hand in `look_at`.
    pub action: Option<Do>,
    /// The panel to look at (the action's panel, or where to work by hand).
    pub look_at: &'static str,
    /// The question the source document asks here.
    pub question: &'static str,
}

/// A lesson: its source document and steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Lesson {
    /// Title.
    pub title: &'static str,
    /// The source document it follows.
    pub source: &'static str,
    /// Whether it needs a loaded model (the from-scratch lesson does not).
    pub needs_model: bool,
    /// Minutes it took from a fresh start on a 2-core laptop with the default model.
    pub minutes: f32,
    /// Steps in order.
    pub steps: Vec<Step>,
}

fn step(
    title: &'static str,
    text: &'static str,
    action: Option<Do>,
    look_at: &'static str,
    question: &'static str,
) -> Step {
    let look_at = action.as_ref().map_or(look_at, Do::panel);
    Step {
        title,
        text,
        action,
        look_at,
        question,
    }
}

const PUN_LINES: &str = "Why do electricians make good swimmers? Because they know the => current
Why did the banker break up with his girlfriend? He lost => interest
Why do cows wear bells? Because their horns don't => work
What do you call a fish without eyes? A => f";

/// Tuned-lens steps of the lens lesson (200, the default, take 13 minutes on 2 cores).
const TUNED_LESSON_STEPS: usize = 40;

/// Epochs the word lesson trains for (the tuned default's recipe otherwise).
const WORD_EPOCHS: usize = 10;

/// Every lesson, in the order of the menu.
pub fn lessons() -> Vec<Lesson> {
    vec![
        Lesson {
            title: "Next-token prediction, from scratch",
            source: "A minimal transformer LM for teaching",
            needs_model: false,
            minutes: 1.5,
            steps: vec![
                step(
                    "Train a tiny transformer",
                    "A language model learns one thing: given the text so far, a probability for \
                     every possible next token. We train a small transformer on Shakespeare; its \
                     loss is the average surprise (−log p) of the true next character.",
                    Some(Do::Scratch { steps: 400 }),
                    "",
                    "The loss starts near ln(vocabulary size). Why there, and what does the \
                     validation curve tell you that the training curve does not?",
                ),
                step(
                    "Sample with temperature",
                    "Generation is repeated next-token prediction: sample a token, append it, \
                     predict again. Temperature divides the logits before the softmax.",
                    None,
                    "From scratch",
                    "Sample at temperature 0.3 and at 1.5. What changes, and why?",
                ),
                step(
                    "Look inside",
                    "The activations of each layer are vectors; a PCA shows their main \
                     directions, and the attention maps show which earlier tokens each position \
                     reads.",
                    None,
                    "From scratch",
                    "Do characters of the same kind (vowels, spaces, capitals) end up close \
                     together in the PCA?",
                ),
            ],
        },
        Lesson {
            title: "The logit lens on puns",
            source: "Logit lens on puns",
            needs_model: true,
            minutes: 5.0,
            steps: vec![
                step(
                    "When does the model get the joke?",
                    "The logit lens reads every layer's residual stream through the final norm \
                     and the unembedding, as if the model stopped there. We follow the pun word \
                     ' current' at the last position, after a pun and after a literal sentence.",
                    Some(Do::Lens {
                        prompts: "Why do electricians make good swimmers? Because they know the\nThe electrician measured the flow of electric",
                        target: " current",
                        stat: Stat::TargetProb,
                    }),
                    "",
                    "At which layer does ' current' first exceed 10%? (See the table beside the \
                     curve.)",
                ),
                step(
                    "Exercise 1: several puns",
                    "Each pun has its own punchline word: current, interest, work, and the 'f' of \
                     'fsh'. The curves share one plot; the table says when each one emerges.",
                    Some(Do::Lens {
                        prompts: PUN_LINES,
                        target: "",
                        stat: Stat::TargetLogProb,
                    }),
                    "",
                    "Do different types of puns emerge at similar layers?",
                ),
                step(
                    "Exercise 3: the whole heatmap",
                    "Every layer at every position, coloured by the log-probability of the \
                     target so that the small probabilities of early layers show.",
                    Some(Do::Lens {
                        prompts: "Why do electricians make good swimmers? Because they know the",
                        target: " current",
                        stat: Stat::TargetLogProb,
                    }),
                    "",
                    "At which positions, besides the last, does ' current' get likely?",
                ),
                step(
                    "Exercise 4: the tuned lens",
                    "The logit lens assumes every layer speaks the final layer's language. A tuned \
                     lens learns one small affine translator per layer. A short training (40 \
                     steps; the panel's button runs 200) is enough to see it; then pick 'tuned' \
                     and run again.",
                    Some(Do::TunedLens {
                        steps: TUNED_LESSON_STEPS,
                    }),
                    "",
                    "Does the tuned lens see the punchline earlier than the logit lens?",
                ),
            ],
        },
        Lesson {
            title: "Teaching the model a new word",
            source: "Neologism learning",
            needs_model: true,
            minutes: 2.0,
            steps: vec![
                step(
                    "Train <pun>",
                    "A new token <pun> gets its own embedding; everything else stays frozen. We \
                     train only that vector so that pun setups marked with <pun> are followed by \
                     their punchlines.",
                    Some(Do::Word {
                        name: "<pun>",
                        data: "pun",
                        config: TrainConfig {
                            epochs: WORD_EPOCHS,
                            ..TrainConfig::default()
                        },
                    }),
                    "",
                    "Does the loss fall steadily? What would overfitting look like here?",
                ),
                step(
                    "What does it mean?",
                    "Self-verbalization: ask the model to define its own new word.",
                    Some(Do::Define("<pun>")),
                    "",
                    "Is the definition about jokes? If not, what does the model think it means?",
                ),
                step(
                    "Can it make new ones?",
                    "Use the word in a request for a new example.",
                    Some(Do::NewExamples("<pun>")),
                    "",
                    "Are the answers puns, or something else?",
                ),
                step(
                    "Which words is it close to?",
                    "Cosine similarity of the trained vector with ordinary words' embeddings.",
                    Some(Do::Similar("<pun>")),
                    "",
                    "Is <pun> closer to 'pun' and 'joke' than to 'wit'? Is any similarity large?",
                ),
            ],
        },
        Lesson {
            title: "Pun vs literal",
            source: "Neologism learning (part 4)",
            needs_model: true,
            minutes: 7.0,
            steps: vec![
                step(
                    "Train <pun> to prefer punchlines",
                    "Each training setup has a punchline and a literal ending. The preference \
                     loss makes the punchline likelier than the literal ending when <pun> is in \
                     the prompt.",
                    Some(Do::Word {
                        name: "<pun>",
                        data: "pun.pref",
                        config: TrainConfig::punchline_demo(),
                    }),
                    "",
                    "What does the preference loss compare that cross-entropy does not?",
                ),
                step(
                    "Train <lit> the other way round",
                    "The same setups, chosen and rejected swapped.",
                    Some(Do::Word {
                        name: "<lit>",
                        data: "literal.pref",
                        config: TrainConfig::punchline_demo(),
                    }),
                    "",
                    "Should <lit> end up far from <pun>, or close to it?",
                ),
                step(
                    "Compare them on jokes neither has seen",
                    "The punchline preference scores held-out jokes: log P(punchline) − log \
                     P(literal ending) with <pun>, with <lit>, with no word and with the plain \
                     word 'pun'.",
                    Some(Do::Compare("<pun>", "<lit>")),
                    "",
                    "Does <pun> prefer punchlines more than <lit> and than no word? Does the \
                     plain word 'pun' do as well?",
                ),
            ],
        },
        Lesson {
            title: "A mixture of factor analyzers",
            source: "Mixture of Factor Analyzers on residual-stream activations",
            needs_model: true,
            minutes: 1.0,
            steps: vec![
                step(
                    "Collect activations",
                    "We run the model over a corpus and keep the residual stream at the middle \
                     layer: one vector per token.",
                    Some(Do::MfaCollect),
                    "",
                    "How many vectors is that, and how large is each?",
                ),
                step(
                    "Fit the mixture",
                    "Each component is a Gaussian with a low-rank covariance: a centre and a \
                     few directions of variation. Training lowers the negative log-likelihood; \
                     the held-out curve shows overfitting.",
                    Some(Do::MfaFit { epochs: 8 }),
                    "",
                    "Does the validation NLL follow the training NLL?",
                ),
                step(
                    "Interpret and steer",
                    "Pick a component: ten contexts drawn from its top 5,000 say what it stands \
                     for (Draw again for ten more), the scatter shows its subspace with tokens \
                     written beside the points. Press Steer to push generation towards its \
                     centre, at its own layer or several at once.",
                    None,
                    "MFA",
                    "Which tokens does steering promote, and do they match the contexts?",
                ),
            ],
        },
        Lesson {
            title: "Injecting a new vocabulary",
            source: "Wake2Vec",
            needs_model: true,
            minutes: 3.5,
            steps: vec![
                step(
                    "Inject and train the new rows",
                    "Hundreds of invented words become new tokens. Their rows start from their \
                     morphemes' embeddings and are trained on a corpus that uses them, with \
                     every other row masked.",
                    Some(Do::Inject),
                    "",
                    "Does validation perplexity on the new words fall as training runs?",
                ),
                step(
                    "Use them",
                    "The Playground writes with the new tokens (shown as chips); the \
                     Embeddings panel places them among the base vocabulary.",
                    None,
                    "Embeddings",
                    "Do the new words sit near their morphemes, or in a cluster of their own?",
                ),
            ],
        },
    ]
}
