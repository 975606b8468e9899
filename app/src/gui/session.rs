//! The last session, kept as a workspace in the app's data folder: words are written as soon as
//! they change (after a training, a load, a removal), the MFA and its activations as soon as
//! they are fitted, collected or loaded, and the settings when eframe asks the app to save (every
//! 30 seconds and on exit). On start the window opens it again, so a crash or a close loses at
//! most half a minute of settings and nothing that was trained.

use std::path::{Path, PathBuf};

use neoscope_api::words::WordInfo;

use super::workspace::{FILE, Workspace};
use super::{MfaPanel, NeoApp};

/// What was last written to the session folder.
pub struct LastSession {
    /// The folder.
    pub dir: PathBuf,
    words: Vec<WordInfo>,
    mfa_generation: u64,
    /// The session found there when it was kept, read once, until it is restored.
    saved: Option<anyhow::Result<Workspace>>,
}

impl LastSession {
    /// The folder under the app's data folder (None where the platform has none).
    pub fn default_dir() -> Option<PathBuf> {
        eframe::storage_dir("Neoscope").map(|d| d.join("last-session"))
    }
}

impl NeoApp {
    /// Keeps the session in `dir` from now on (what is there now is what it starts from).
    pub fn keep_session(&mut self, dir: PathBuf) {
        let saved = dir.join(FILE).exists().then(|| Workspace::read(&dir));
        self.session = Some(LastSession {
            dir,
            words: self.shared.words.clone(),
            mfa_generation: self.panel::<MfaPanel>().generation,
            saved,
        });
    }

    /// The model the kept session was using, if it names one.
    pub fn session_model(&self) -> Option<&Path> {
        match self.session.as_ref()?.saved.as_ref()? {
            Ok(ws) => ws.model.as_deref(),
            Err(_) => None,
        }
    }

    /// Opens the kept session's workspace if there is one; `with_model`: also its model.
    pub fn restore_session(&mut self, with_model: bool) {
        let Some((dir, saved)) = self
            .session
            .as_mut()
            .and_then(|s| Some((s.dir.clone(), s.saved.take()?)))
        else {
            return;
        };
        match saved.map(|ws| self.apply_workspace(&dir, ws, with_model)) {
            Ok(()) if self.shared.error.is_none() => {
                self.shared.notice = Some(format!(
                    "Restored the last session ({}); start with --fresh to skip it",
                    dir.display()
                ));
            }
            Ok(()) => {}
            Err(e) => {
                self.shared.error = Some(format!("The last session could not be restored: {e:#}"));
            }
        }
    }

    /// Writes what changed since the last call (words, MFA) to the session folder.
    pub(super) fn save_session_changes(&mut self) {
        let Some(s) = &self.session else { return };
        let words_changed = s.words != self.shared.words;
        let generation = self.panel::<MfaPanel>().generation;
        let mfa_changed = s.mfa_generation != generation;
        if !(words_changed || mfa_changed) {
            return;
        }
        let dir = s.dir.clone();
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.shared.error = Some(format!("cannot keep the session in {}: {e}", dir.display()));
            self.session = None;
            return;
        }
        let ws = self.workspace();
        if words_changed {
            self.save_words(&dir, &ws);
        }
        if mfa_changed {
            self.save_mfa(&dir, &ws);
        }
        if let Err(e) = ws.write(&dir) {
            self.shared.error = Some(format!("cannot keep the session: {e:#}"));
        }
        if let Some(s) = &mut self.session {
            s.words = self.shared.words.clone();
            s.mfa_generation = generation;
        }
    }

    /// Writes the settings to the session folder (eframe's save: periodically and on exit).
    /// `periodic` saves wait while the engine is busy, so that a session being restored (its
    /// MFA not loaded yet) is not written back without it.
    pub fn save_session_settings(&mut self, periodic: bool) {
        let Some(s) = &self.session else { return };
        if periodic && self.busy() {
            return;
        }
        let dir = s.dir.clone();
        if std::fs::create_dir_all(&dir).is_ok()
            && let Err(e) = self.workspace().write(&dir)
        {
            self.shared.error = Some(format!("cannot keep the session: {e:#}"));
        }
    }
}
