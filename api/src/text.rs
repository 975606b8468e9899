//! Prompting: tokenize, next-token tables, generation with a sampling recipe.

use serde::{Deserialize, Serialize};

use crate::hooks::HookSpec;

/// One row of a top-k table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenScore {
    /// Token id.
    pub id: u32,
    /// Its text.
    pub text: String,
    /// Raw logit.
    pub logit: f32,
    /// Softmax probability.
    pub prob: f32,
}

/// How to pick the next token.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// Temperature; 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1]; 1 disables it.
    pub top_p: f32,
    /// Seed of the random generator.
    pub seed: u64,
}

impl Sampling {
    /// Greedy decoding.
    pub const GREEDY: Self = Self {
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
    };

    /// Checks the settings: a finite temperature ≥ 0 and a nucleus mass in (0, 1].
    pub fn validate(&self) -> Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature {} must be a finite number ≥ 0 (0 is greedy)",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top-p {} must be in (0, 1]", self.top_p));
        }
        Ok(())
    }

    /// Whether this picks the arg-max.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Prompting commands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TextCommand {
    /// Token ids and pieces of a text.
    Tokenize {
        /// The text.
        text: String,
        /// Render the chat template (user turn + generation prompt) first.
        chat: bool,
    },
    /// The most likely next tokens after a prompt.
    NextToken {
        /// The prompt.
        text: String,
        /// Chat mode.
        chat: bool,
        /// How many rows.
        top_k: usize,
        /// Interventions to apply.
        hooks: HookSpec,
    },
    /// Generate a continuation, streaming tokens.
    Generate {
        /// The prompt.
        text: String,
        /// Chat mode.
        chat: bool,
        /// Token budget.
        max_new_tokens: usize,
        /// Sampling settings.
        sampling: Sampling,
        /// Interventions to apply.
        hooks: HookSpec,
    },
}

/// Prompting results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TextResult {
    /// Tokenization.
    Tokens {
        /// Ids.
        ids: Vec<u32>,
        /// Their texts.
        pieces: Vec<String>,
    },
    /// Next-token table.
    NextToken {
        /// Prompt ids.
        ids: Vec<u32>,
        /// The table.
        top: Vec<TokenScore>,
    },
    /// Generation finished (or was stopped).
    Generated {
        /// Prompt ids.
        prompt_ids: Vec<u32>,
        /// New ids.
        new_ids: Vec<u32>,
        /// New text.
        text: String,
        /// Whether the user stopped it.
        stopped: bool,
    },
}
