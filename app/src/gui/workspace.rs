//! Workspaces: one folder holding what a session was about — the model, the new words, the MFA
//! with its activations, and every panel's settings — so a teacher can prepare a demo and open
//! it in class. The app also keeps its last session as a workspace in its data folder and opens
//! it on start.
//!
//! The folder holds `workspace.json` (written atomically, versioned), one word file per word
//! (`word-N.safetensors` + `.json`), `mfa.json` + `mfa.safetensors` and `activations.*`. Word,
//! MFA and activation files are written by the engine in its own formats, which carry the base
//! model and are refused for another one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use neoscope_api::mfa::MfaCommand;
use neoscope_api::model::ModelCommand;
use neoscope_api::words::WordCommand;
use serde::{Deserialize, Serialize};

use super::dialogs::{Mode, Pending};
use super::{MfaPanel, ModelPanel, NeoApp, WordsPanel};

/// The settings file inside a workspace folder.
pub const FILE: &str = "workspace.json";
/// The format's name, checked on open.
const FORMAT: &str = "neoscope-workspace";
/// The format version this build writes and reads.
const VERSION: u32 = 1;

/// A word kept in the workspace and the file stem it is saved under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWord {
    /// The word's name, e.g. `<pun>`.
    pub name: String,
    /// File stem inside the folder (names may hold characters a file name cannot).
    pub file: String,
}

/// What `workspace.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workspace {
    /// Always `neoscope-workspace`.
    pub format: String,
    /// Format version.
    pub version: u32,
    /// The model file or folder (None: none was loaded).
    pub model: Option<PathBuf>,
    /// Its SHA-256: a model with the same hash loaded from elsewhere (another machine's cache)
    /// is the same model.
    #[serde(default)]
    pub model_sha256: Option<String>,
    /// The new words saved beside it.
    pub words: Vec<SavedWord>,
    /// Whether `mfa.*` holds a fitted MFA.
    pub mfa: bool,
    /// Whether `activations.*` holds the MFA panel's activations.
    pub activations: bool,
    /// The panel shown.
    pub active: String,
    /// Each panel's settings, by title.
    pub panels: BTreeMap<String, serde_json::Value>,
}

impl Workspace {
    /// Reads `dir/workspace.json`, naming the file and what is wrong with it.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{} is not a workspace: cannot read {FILE}", dir.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        let format = v.get("format").and_then(|f| f.as_str()).unwrap_or("");
        if format != FORMAT {
            bail!(
                "{}: field \"format\" is {format:?}, not {FORMAT:?}",
                path.display()
            );
        }
        let version = v.get("version").and_then(serde_json::Value::as_u64);
        if version != Some(u64::from(VERSION)) {
            bail!(
                "{}: field \"version\" is {version:?}; this build reads version {VERSION}",
                path.display()
            );
        }
        serde_json::from_value(v).with_context(|| format!("{}", path.display()))
    }

    /// Writes `dir/workspace.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self)?;
        neoscope_api::files::write_atomic(&dir.join(FILE), &bytes)?;
        Ok(())
    }
}

impl NeoApp {
    /// The settings part of a workspace: model, words (named, not yet written), MFA flags,
    /// panel settings.
    pub fn workspace(&self) -> Workspace {
        let mfa = self.panel::<MfaPanel>();
        Workspace {
            format: FORMAT.into(),
            version: VERSION,
            model: self.shared.model.as_ref().map(|m| m.path.clone()),
            model_sha256: self.shared.model.as_ref().map(|m| m.sha256.clone()),
            words: self
                .shared
                .words
                .iter()
                .enumerate()
                .map(|(i, w)| SavedWord {
                    name: w.name.clone(),
                    file: format!("word-{i}"),
                })
                .collect(),
            mfa: mfa.fitted.is_some(),
            activations: mfa.acts.is_some(),
            active: self.active().to_owned(),
            panels: self
                .panels
                .iter()
                .filter_map(|p| p.settings().map(|v| (p.title().to_owned(), v)))
                .collect(),
        }
    }

    /// Saves everything into `dir` (created if missing): the settings now, and the words, MFA
    /// and activations through the engine (its answers report each file).
    pub fn save_workspace(&mut self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the folder {}", dir.display()))?;
        let ws = self.workspace();
        self.save_words(dir, &ws);
        self.save_mfa(dir, &ws);
        ws.write(dir)?;
        self.shared.notice = Some(format!("Saved the workspace in {}", dir.display()));
        Ok(())
    }

    /// Asks the engine to write each word to its own file in `dir`.
    pub(super) fn save_words(&mut self, dir: &Path, ws: &Workspace) {
        for w in &ws.words {
            self.send_as::<WordsPanel>(WordCommand::Save {
                names: vec![w.name.clone()],
                path: dir.join(&w.file),
            });
        }
    }

    /// Asks the engine to write the MFA and its activations to `dir`.
    pub(super) fn save_mfa(&mut self, dir: &Path, ws: &Workspace) {
        if ws.activations {
            self.send_as::<MfaPanel>(MfaCommand::SaveActivations {
                path: dir.join("activations"),
            });
        }
        if ws.mfa {
            self.send_as::<MfaPanel>(MfaCommand::Save {
                path: dir.join("mfa"),
            });
        }
    }

    /// Opens the workspace in `dir`: panel settings at once; the model (when it differs from
    /// the loaded one and `with_model`), words, activations and MFA through the engine, in that
    /// order. Settings a panel could not read are named in the status line.
    pub fn open_workspace(&mut self, dir: &Path, with_model: bool) -> Result<()> {
        let ws = Workspace::read(dir)?;
        self.apply_workspace(dir, ws, with_model);
        Ok(())
    }

    /// Applies a workspace read from `dir` (see `open_workspace`).
    pub(super) fn apply_workspace(&mut self, dir: &Path, ws: Workspace, with_model: bool) {
        let mut unread = Vec::new();
        for p in &mut self.panels {
            if let Some(v) = ws.panels.get(p.title()) {
                unread.extend(
                    p.restore(v)
                        .into_iter()
                        .map(|e| format!("{} {e}", p.title())),
                );
            }
        }
        let loaded = self.shared.model.as_ref();
        let same = loaded.is_some_and(|m| {
            ws.model.as_ref() == Some(&m.path)
                || ws
                    .model_sha256
                    .as_deref()
                    .is_some_and(|h| !h.is_empty() && h == m.sha256)
        });
        if with_model
            && !same
            && let Some(path) = &ws.model
        {
            if path.exists() {
                self.send_as::<ModelPanel>(ModelCommand::Load {
                    path: path.clone(),
                    options: Default::default(),
                });
            } else {
                unread.push(format!(
                    "the model {} is not on this machine (load it in the Model panel; words and MFA made for another model are refused)",
                    path.display()
                ));
            }
        }
        for w in &ws.words {
            self.send_as::<WordsPanel>(WordCommand::Load {
                path: dir.join(&w.file),
            });
        }
        if ws.activations {
            self.send_as::<MfaPanel>(MfaCommand::LoadActivations {
                path: dir.join("activations"),
            });
        }
        if ws.mfa {
            self.send_as::<MfaPanel>(MfaCommand::Load {
                path: dir.join("mfa"),
            });
        }
        self.open(&ws.active);
        if unread.is_empty() {
            self.shared.notice = Some(format!("Opened the workspace {}", dir.display()));
        } else {
            self.shared.error = Some(format!(
                "Opened {}, but some settings could not be read and kept their defaults: {}",
                dir.display(),
                unread.join("; ")
            ));
        }
    }
}

/// What a workspace folder dialog is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Save into the folder.
    Save,
    /// Open the folder.
    Open,
}

/// The File menu's workspace entries; starts the folder dialog.
pub fn menu(dialog: &mut Option<Pending<Action>>, ui: &mut egui::Ui) {
    let busy = dialog.is_some();
    if ui
        .add_enabled(!busy, egui::Button::new("Save workspace…"))
        .on_hover_text(
            "Write the model choice, new words, MFA and every panel's settings into one folder",
        )
        .clicked()
    {
        *dialog = Some(Pending::new(
            Action::Save,
            Mode::Folder,
            "Save the workspace into this folder",
            ("", &[]),
            "",
        ));
        ui.close();
    }
    if ui
        .add_enabled(!busy, egui::Button::new("Open workspace…"))
        .clicked()
    {
        *dialog = Some(Pending::new(
            Action::Open,
            Mode::Folder,
            "Open a workspace folder",
            ("", &[]),
            "",
        ));
        ui.close();
    }
}

impl NeoApp {
    /// Carries out a workspace dialog's answer.
    pub(super) fn poll_workspace_dialog(&mut self) {
        let Some(d) = &self.workspace_dialog else {
            return;
        };
        let Some(answer) = d.poll() else { return };
        let what = d.purpose;
        self.workspace_dialog = None;
        let Some(dir) = answer else { return };
        let r = match what {
            Action::Save => self.save_workspace(&dir),
            Action::Open => self.open_workspace(&dir, true),
        };
        if let Err(e) = r {
            self.shared.error = Some(format!("{e:#}"));
        }
    }
}
