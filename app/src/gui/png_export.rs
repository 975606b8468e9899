//! Exports a part of the window (a plot, a comparison) as a PNG: the user picks a file, the
//! next rendered frame is captured with `request_screenshot`, cropped to the part, encoded and
//! written atomically.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};

use super::dialogs::{Mode, Pending};

/// A PNG export in progress.
pub struct PngExport {
    rect: egui::Rect,
    dialog: Option<Pending<()>>,
    done: Option<Receiver<Result<PathBuf, String>>>,
}

impl PngExport {
    /// Asks where to save the region `rect` (in points) of the window.
    pub fn start(rect: egui::Rect, name: &str) -> Self {
        Self {
            rect,
            dialog: Some(Pending::new(
                (),
                Mode::Save,
                "Save as PNG",
                ("PNG image", &["png"]),
                name,
            )),
            done: None,
        }
    }

    /// Advances the export; returns the outcome once it is over (`None` while running; a
    /// cancelled dialog ends with `Some(Ok(None))`).
    pub fn poll(&mut self, ctx: &egui::Context) -> Option<Result<Option<PathBuf>, String>> {
        if let Some(d) = &self.dialog
            && let Some(answer) = d.poll()
        {
            self.dialog = None;
            let Some(path) = answer else {
                return Some(Ok(None));
            };
            let (tx, rx) = channel();
            self.done = Some(rx);
            capture(ctx, self.rect, path.with_extension("png"), tx);
        }
        let rx = self.done.as_ref()?;
        rx.try_recv().ok().map(|r| r.map(Some))
    }
}

fn capture(
    ctx: &egui::Context,
    rect: egui::Rect,
    path: PathBuf,
    tx: Sender<Result<PathBuf, String>>,
) {
    let ppp = ctx.pixels_per_point();
    let waker = ctx.clone();
    ctx.request_screenshot(move |img| {
        let region = img.region(&rect, Some(ppp));
        let _ = tx.send(write_png(&region, &path).map(|()| path));
        waker.request_repaint();
    });
}

/// Encodes an image as PNG and writes it atomically.
pub fn write_png(img: &egui::ColorImage, path: &std::path::Path) -> Result<(), String> {
    let [w, h] = img.size;
    let (w, h) = (
        u32::try_from(w).map_err(|e| e.to_string())?,
        u32::try_from(h).map_err(|e| e.to_string())?,
    );
    let buf = image::RgbaImage::from_raw(w, h, img.as_raw().to_vec())
        .ok_or_else(|| "the captured image has an unexpected size".to_owned())?;
    let mut bytes = Vec::new();
    buf.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| format!("encoding {}: {e}", path.display()))?;
    neoscope_api::files::write_atomic(path, &bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cropped_region_round_trips_through_png() {
        let mut img = egui::ColorImage::filled([8, 6], egui::Color32::BLACK);
        img[(2, 1)] = egui::Color32::from_rgb(200, 10, 30);
        let region = img.region(
            &egui::Rect::from_min_size(egui::pos2(2.0, 1.0), egui::vec2(4.0, 3.0)),
            Some(1.0),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plot.png");
        write_png(&region, &path).unwrap();
        let back = image::open(&path).unwrap().to_rgba8();
        assert_eq!(back.dimensions(), (4, 3));
        assert_eq!(back.get_pixel(0, 0).0, [200, 10, 30, 255]);
        assert_eq!(back.get_pixel(1, 0).0, [0, 0, 0, 255]);
    }
}
