//! The Playground panel: a prompt, chat or plain mode, sampling settings, streamed generation
//! with a stop button, and the next-token top-k table.

use neoscope_api::RequestId;
use neoscope_api::hooks::HookSpec;
use neoscope_api::model::InjectedVocab;
use neoscope_api::text::TextCommand;
use neoscope_api::text::{Sampling, TokenScore};

use neoscope_api::text::TextResult;
use neoscope_api::{Event, JobResult};

use super::lessons::Do;
use super::panel::{Message, Panel, Shared, clear_id};
use super::widgets::word_chips;

/// State of the Playground.
pub struct Playground {
    /// The prompt.
    pub prompt: String,
    /// Chat template on.
    pub chat: bool,
    /// Greedy decoding.
    pub greedy: bool,
    /// Temperature when sampling.
    pub temperature: f32,
    /// Nucleus mass when sampling.
    pub top_p: f32,
    /// Seed when sampling.
    pub seed: u64,
    /// Token budget.
    pub max_new_tokens: usize,
    /// Rows of the next-token table.
    pub top_k: usize,
    /// Generated text (streamed).
    pub output: String,
    /// Byte ranges of an injection run's forms in `output`.
    pub output_forms: Vec<(usize, usize)>,
    /// Number of generated tokens.
    pub new_tokens: usize,
    /// Prompt length in tokens (from the last prediction).
    pub prompt_tokens: usize,
    /// Next-token table.
    pub top: Vec<TokenScore>,
    /// Running generation.
    pub generating: Option<RequestId>,
    /// Running prediction.
    pub predicting: Option<RequestId>,
}

impl Default for Playground {
    fn default() -> Self {
        Self {
            prompt: "What is a pun?".into(),
            chat: true,
            greedy: true,
            temperature: 0.8,
            top_p: 0.95,
            seed: 0,
            max_new_tokens: 96,
            top_k: 10,
            output: String::new(),
            output_forms: Vec::new(),
            new_tokens: 0,
            prompt_tokens: 0,
            top: Vec::new(),
            generating: None,
            predicting: None,
        }
    }
}

impl Playground {
    fn sampling(&self) -> Sampling {
        if self.greedy {
            Sampling::GREEDY
        } else {
            Sampling {
                temperature: self.temperature,
                top_p: self.top_p,
                seed: self.seed,
            }
        }
    }
}

impl Panel for Playground {
    super::panel::panel_settings!(
        prompt,
        chat,
        greedy,
        temperature,
        top_p,
        seed,
        max_new_tokens,
        top_k
    );

    fn title(&self) -> &'static str {
        "Playground"
    }

    fn show(&mut self, s: &mut Shared, ui: &mut egui::Ui) {
        show(self, s, ui);
    }

    fn stream(&mut self, s: &mut Shared, ev: Event) {
        if let Event::Token { token, text, .. } = ev {
            let form = s
                .model_info()
                .and_then(|m| m.injected.as_ref())
                .and_then(|v| v.form(token));
            if let Some(f) = form
                && let Some(at) = text.find(f)
            {
                let start = self.output.len() + at;
                self.output_forms.push((start, start + f.len()));
            }
            self.output.push_str(&text);
        }
    }

    fn finished(&mut self, _s: &mut Shared, id: RequestId, result: JobResult) {
        clear_id(&mut self.generating, id);
        clear_id(&mut self.predicting, id);
        let JobResult::Text(r) = result else { return };
        match *r {
            TextResult::Generated { new_ids, text, .. } => {
                if self.output != text {
                    // The streamed pieces differ from the whole decode (split characters):
                    // the whole text wins, without marks.
                    self.output = text;
                    self.output_forms.clear();
                }
                self.new_tokens = new_ids.len();
            }
            TextResult::NextToken { ids, top } => {
                self.prompt_tokens = ids.len();
                self.top = top;
            }
            TextResult::Tokens { .. } => {}
        }
    }

    fn failed(&mut self, id: RequestId) {
        clear_id(&mut self.generating, id);
        clear_id(&mut self.predicting, id);
    }

    fn receive(&mut self, s: &mut Shared, msg: &Message) {
        if let Message::Lesson(Do::Generate {
            prompt,
            max_new_tokens,
        }) = msg
        {
            (*prompt).clone_into(&mut self.prompt);
            self.max_new_tokens = *max_new_tokens;
            self.greedy = true;
            self.chat = false;
            start(self, s);
        }
    }
}

/// Starts a generation and a next-token prediction for the current prompt.
pub fn start(p: &mut Playground, s: &mut Shared) {
    let gen_cmd = TextCommand::Generate {
        text: p.prompt.clone(),
        chat: p.chat,
        max_new_tokens: p.max_new_tokens,
        sampling: p.sampling(),
        hooks: HookSpec::default(),
    };
    let next_cmd = TextCommand::NextToken {
        text: p.prompt.clone(),
        chat: p.chat,
        top_k: p.top_k,
        hooks: HookSpec::default(),
    };
    p.output.clear();
    p.output_forms.clear();
    p.new_tokens = 0;
    p.predicting = s.send(next_cmd);
    p.generating = s.send(gen_cmd);
}

/// Draws the Playground.
fn show(p: &mut Playground, s: &mut Shared, ui: &mut egui::Ui) {
    ui.heading("Playground");
    let loaded = s.model_info().is_some();
    if !loaded {
        ui.label("Load a model in the Model panel first.");
    }
    egui::Panel::right("playground_settings")
        .resizable(false)
        .exact_size(300.0)
        .show(ui, |ui| settings(p, ui));
    egui::CentralPanel::default().show(ui, |ui| {
        ui.horizontal(|ui| {
            ui.label("Mode:");
            ui.selectable_value(&mut p.chat, true, "Chat")
                .on_hover_text("Wrap the prompt in the model's chat template as a user turn");
            ui.selectable_value(&mut p.chat, false, "Plain")
                .on_hover_text("Continue the text as it is");
        });
        let names: Vec<String> = s.words.iter().map(|w| w.name.clone()).collect();
        let mut layouter = |ui: &egui::Ui, buf: &dyn egui::TextBuffer, wrap: f32| {
            let mut job = word_chips(ui, buf.as_str(), &names);
            job.wrap.max_width = wrap;
            ui.painter().layout_job(job)
        };
        ui.add(
            egui::TextEdit::multiline(&mut p.prompt)
                .hint_text("Type a prompt… New words (see Words) can be used by name.")
                .desired_rows(4)
                .desired_width(f32::INFINITY)
                .layouter(&mut layouter),
        );
        if !names.is_empty() {
            insert_buttons(
                ui,
                &mut p.prompt,
                "New words:",
                &names,
                "Insert into the prompt",
            );
        }
        if let Some(v) = s.model_info().and_then(|m| m.injected.as_ref()) {
            let label = format!(
                "{} injected forms (run {}, step {}{}), e.g.:",
                v.forms.len(),
                v.run.file_name().unwrap_or_default().to_string_lossy(),
                v.step,
                v.phases()
            );
            let hover = "Insert into the prompt; generated forms are underlined";
            insert_buttons(
                ui,
                &mut p.prompt,
                &label,
                &v.forms[..v.forms.len().min(8)],
                hover,
            );
        }
        ui.horizontal(|ui| {
            let running = p.generating;
            match running {
                Some(id) => {
                    if ui.button("Stop").clicked() {
                        s.cancel(id);
                    }
                    ui.spinner();
                }
                None => {
                    let ready = loaded && !p.prompt.trim().is_empty();
                    if ui
                        .add_enabled(ready, egui::Button::new("Generate"))
                        .clicked()
                    {
                        start(p, s);
                    }
                }
            }
        });
        ui.add_space(6.0);
        ui.strong("Output");
        egui::Frame::group(ui.style()).show(ui, |ui| {
            ui.set_min_height(120.0);
            ui.set_width(ui.available_width());
            egui::ScrollArea::vertical()
                .max_height(220.0)
                .stick_to_bottom(true)
                .show(ui, |ui| {
                    if p.output.is_empty() {
                        ui.weak("Generated text appears here as it streams.");
                    } else {
                        ui.label(super::widgets::marked_text(ui, &p.output, &p.output_forms));
                    }
                });
        });
        ui.add_space(6.0);
        top_k_table(ui, p, s.model_info().and_then(|m| m.injected.as_ref()));
    });
}

/// A row of buttons that append their text (after a space) to the prompt.
fn insert_buttons(
    ui: &mut egui::Ui,
    prompt: &mut String,
    label: &str,
    items: &[String],
    hover: &str,
) {
    ui.horizontal_wrapped(|ui| {
        ui.weak(label);
        for item in items {
            if ui.button(item).on_hover_text(hover).clicked() {
                prompt.push(' ');
                prompt.push_str(item);
            }
        }
    });
}

fn settings(p: &mut Playground, ui: &mut egui::Ui) {
    ui.strong("Sampling");
    ui.checkbox(&mut p.greedy, "Greedy (arg-max)");
    ui.add_enabled_ui(!p.greedy, |ui| {
        ui.add(egui::Slider::new(&mut p.temperature, 0.05..=2.0).text("temperature"));
        ui.add(egui::Slider::new(&mut p.top_p, 0.05..=1.0).text("top-p"));
        ui.horizontal(|ui| {
            ui.label("seed");
            ui.add(egui::DragValue::new(&mut p.seed));
        });
    });
    ui.add(egui::Slider::new(&mut p.max_new_tokens, 1..=512).text("max new tokens"));
    ui.add(egui::Slider::new(&mut p.top_k, 1..=50).text("top-k rows"));
}

fn top_k_table(ui: &mut egui::Ui, p: &Playground, injected: Option<&InjectedVocab>) {
    ui.strong(if p.prompt_tokens > 0 {
        format!("Next token after the prompt ({} tokens)", p.prompt_tokens)
    } else {
        "Next token".to_owned()
    });
    if p.top.is_empty() {
        ui.weak("Generate to see the model's most likely next tokens.");
        return;
    }
    egui::Grid::new("top_k")
        .num_columns(4)
        .striped(true)
        .spacing([16.0, 3.0])
        .show(ui, |ui| {
            ui.strong("token");
            ui.strong("id");
            ui.strong("logit");
            ui.strong("probability");
            ui.end_row();
            for t in &p.top {
                if injected.and_then(|v| v.form(t.id)).is_some() {
                    ui.monospace(format!("{:?}", t.text))
                        .on_hover_text("a form of the injected vocabulary")
                        .highlight();
                } else {
                    ui.monospace(format!("{:?}", t.text));
                }
                ui.monospace(t.id.to_string());
                ui.monospace(format!("{:.3}", t.logit));
                ui.add(
                    egui::ProgressBar::new(t.prob)
                        .text(format!("{:.1}%", t.prob * 100.0))
                        .desired_width(160.0),
                );
                ui.end_row();
            }
        });
}
