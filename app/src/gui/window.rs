//! The native window: opens it on an engine and hands frames to `NeoApp`.

use neoscope_engine::worker::Waker;

use super::session::LastSession;
use super::{ModelPanel, NeoApp};
use crate::options::Global;

/// Opens the app window.
pub fn run(g: &Global) -> anyhow::Result<()> {
    let g = g.clone();
    let load = g.load_command();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_inner_size([1180.0, 760.0])
            .with_min_inner_size([720.0, 480.0])
            .with_title("Neoscope"),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "Neoscope",
        options,
        Box::new(move |cc| {
            let ctx = cc.egui_ctx.clone();
            let waker: Waker = std::sync::Arc::new(move || ctx.request_repaint());
            let model_dir = g.engine_options().model_dir;
            let mut app = NeoApp::with_engine(g.open_engine(waker), model_dir);
            if let Some(dir) = LastSession::default_dir() {
                app.keep_session(dir);
            }
            // The model named on the command line wins over the last session's.
            let restore_model = g.model.is_none() && !g.fresh;
            if !(restore_model && app.session_model().is_some_and(|m| m.exists())) {
                app.send_as::<ModelPanel>(load);
            }
            if !g.fresh {
                app.restore_session(restore_model);
            }
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("could not open the window: {e}"))
}

impl eframe::App for NeoApp {
    fn save(&mut self, _storage: &mut dyn eframe::Storage) {
        self.save_session_settings(true);
    }

    fn on_exit(&mut self) {
        self.save_session_settings(false);
    }

    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        self.poll(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.draw(ui);
    }
}
