//! The MFA panel's files: what each file dialog is for, saving and loading through the engine,
//! and the CSV / JSON exports.

use neoscope_api::mfa::{ComponentInfo, MfaCommand};

use super::dialogs::{Mode, Pending};
use super::mfa_panel::{MfaPanel, send_job};
use super::panel::Shared;

/// What a file dialog of this panel is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MfaFile {
    /// Save the fitted MFA.
    Save,
    /// Load an MFA.
    Load,
    /// Load saved activations.
    LoadActivations,
    /// Add a text file to the corpus.
    AddText,
    /// Export the component table as CSV.
    Csv,
    /// Export components and steering as JSON.
    Json,
}

pub(super) fn handle_dialog(p: &mut MfaPanel, s: &mut Shared) {
    let Some(d) = &p.dialog else { return };
    let Some(answer) = d.poll() else { return };
    let what = d.purpose;
    p.dialog = None;
    let Some(path) = answer else { return };
    let write = |s: &mut Shared, path: std::path::PathBuf, bytes: Vec<u8>| {
        match neoscope_api::files::write_atomic(&path, &bytes) {
            Ok(()) => s.notice = Some(format!("Saved {}", path.display())),
            Err(e) => s.error = Some(e.to_string()),
        }
    };
    match what {
        MfaFile::Save => send_job(p, s, MfaCommand::Save { path }, "saving"),
        MfaFile::Load => send_job(p, s, MfaCommand::Load { path }, "loading"),
        MfaFile::LoadActivations => send_job(
            p,
            s,
            MfaCommand::LoadActivations { path },
            "loading activations",
        ),
        MfaFile::AddText => p.texts.push(path),
        MfaFile::Csv => {
            let csv = p
                .fitted
                .as_ref()
                .map(|f| components_csv(&f.components))
                .unwrap_or_default();
            write(s, path.with_extension("csv"), csv.into_bytes());
        }
        MfaFile::Json => {
            let v = serde_json::json!({"mfa": p.fitted, "steering": p.steer});
            match serde_json::to_vec_pretty(&v) {
                Ok(b) => write(s, path.with_extension("json"), b),
                Err(e) => s.error = Some(e.to_string()),
            }
        }
    }
}

/// The component table as CSV.
pub fn components_csv(cs: &[ComponentInfo]) -> String {
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut out = String::from("component,size,weight,top_tokens,top_next_tokens\n");
    for c in cs {
        // Tokens in Rust string syntax so spaces and newlines stay visible.
        let join = |v: &[(String, usize)]| {
            v.iter()
                .map(|(t, n)| format!("{t:?}:{n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            c.index,
            c.size,
            c.weight,
            q(&join(&c.top_tokens)),
            q(&join(&c.top_next))
        ));
    }
    out
}

pub(super) fn dialog(p: &mut MfaPanel, what: MfaFile) {
    let (mode, title, filter, name): (Mode, &str, (&str, &[&str]), &str) = match what {
        MfaFile::Save => (Mode::Save, "Save MFA", ("MFA", &["json"]), "mfa.json"),
        MfaFile::Load => (Mode::Open, "Load MFA", ("MFA", &["json"]), ""),
        MfaFile::LoadActivations => (
            Mode::Open,
            "Load activations",
            ("Activations", &["json"]),
            "",
        ),
        MfaFile::AddText => (Mode::Open, "Add a text file", ("Text", &["txt", "md"]), ""),
        MfaFile::Csv => (
            Mode::Save,
            "Export components",
            ("CSV", &["csv"]),
            "components.csv",
        ),
        MfaFile::Json => (
            Mode::Save,
            "Export MFA results",
            ("JSON", &["json"]),
            "mfa.json",
        ),
    };
    p.dialog = Some(Pending::new(what, mode, title, filter, name));
}
