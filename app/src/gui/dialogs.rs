//! Native file dialogs run off the UI thread (`rfd`'s calls block); the panel polls the
//! receiver each frame.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, channel};

/// Open or save.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Pick an existing file.
    Open,
    /// Choose where to save.
    Save,
    /// Pick (or create) a folder.
    Folder,
}

/// Starts a dialog; the receiver yields the chosen path (or `None` if cancelled).
pub fn start(
    mode: Mode,
    title: &str,
    filter: (&str, &[&str]),
    name: &str,
) -> Receiver<Option<PathBuf>> {
    let (tx, rx) = channel();
    let title = title.to_owned();
    let (fname, exts) = (
        filter.0.to_owned(),
        filter.1.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>(),
    );
    let name = name.to_owned();
    std::thread::spawn(move || {
        let d = rfd::FileDialog::new()
            .set_title(&title)
            .add_filter(&fname, &exts);
        let picked = match mode {
            Mode::Open => d.pick_file(),
            Mode::Save => d.set_file_name(&name).save_file(),
            Mode::Folder => rfd::FileDialog::new().set_title(&title).pick_folder(),
        };
        let _ = tx.send(picked);
    });
    rx
}

/// A dialog in flight, tagged with what its answer is for.
pub struct Pending<T> {
    /// What to do with the path.
    pub purpose: T,
    rx: Receiver<Option<PathBuf>>,
}

impl<T: Copy> Pending<T> {
    /// Starts a dialog for `purpose`.
    pub fn new(purpose: T, mode: Mode, title: &str, filter: (&str, &[&str]), name: &str) -> Self {
        Self {
            purpose,
            rx: start(mode, title, filter, name),
        }
    }

    /// The answer, once there is one: `Some(Some(path))`, `Some(None)` if cancelled.
    pub fn poll(&self) -> Option<Option<PathBuf>> {
        self.rx.try_recv().ok()
    }
}
