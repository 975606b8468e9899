//! Shared helpers for end-to-end tests: the real default model, fetched once into the model
//! cache (the same code path as `neoscope fetch`) and loaded once per test binary.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::Device;
use neoscope_engine::fetch::{ensure_default_model, model_cache_dir, python_from_env};
use neoscope_engine::model::{LoadedModel, load_model};

/// Path of the default model, fetching it if needed.
pub fn default_model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        ensure_default_model(&model_cache_dir(), &python_from_env(), &mut |_| {}, &|| {
            false
        })
        .unwrap_or_else(|e| panic!("cannot obtain the default model: {e}"))
    })
    .clone()
}

/// The default model on the CPU, loaded once.
pub fn model() -> &'static LoadedModel {
    static MODEL: OnceLock<LoadedModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        load_model(&default_model_path(), &Device::Cpu)
            .unwrap_or_else(|e| panic!("cannot load the default model: {e}"))
    })
}

/// A shipped dataset file from `assets/datasets/`.
pub fn shipped_data(name: &str) -> Vec<neoscope_engine::words::dataset::Example> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/datasets");
    neoscope_engine::words::dataset::load(&root.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .examples
}

/// A new word `name` (the default small random start) trained on the real model on the
/// shipped dataset `file` with `cfg`; returns it with its epoch losses.
pub fn trained_word(
    name: &str,
    file: &str,
    cfg: &neoscope_engine::words::train::TrainConfig,
) -> (neoscope_engine::words::Word, Vec<f32>) {
    use neoscope_engine::words::train::{StopReason, train};
    use neoscope_engine::words::{Init, Injection, Word, init_vector};
    let m = model();
    let init = Init::default();
    let mut w = Word {
        name: name.into(),
        vector: init_vector(m, &init).unwrap_or_else(|e| panic!("{e}")),
        injection: Injection::Embedding,
        init,
    };
    let t = std::time::Instant::now();
    let out = train(
        m,
        std::slice::from_ref(&w),
        &shipped_data(file),
        cfg,
        &mut |_| true,
    )
    .unwrap_or_else(|e| panic!("training {name}: {e}"));
    eprintln!(
        "{name}: epoch losses {:?} in {:.1} s",
        out.epoch_losses,
        t.elapsed().as_secs_f32()
    );
    assert_eq!(out.stop, StopReason::Completed);
    w.vector = out.vectors[0].clone();
    (w, out.epoch_losses)
}

/// The app rendered through wgpu with the real default model loaded.
pub fn loaded_app() -> egui_kittest::Harness<'static, neoscope::gui::NeoApp> {
    let model_path = default_model_path();
    let opts = neoscope_engine::worker::EngineOptions {
        model_dir: model_path
            .parent()
            .map_or_else(model_cache_dir, std::path::Path::to_path_buf),
        python: "python3".into(),
        device: neoscope_engine::worker::DeviceChoice::Cpu,
    };
    let mut app = neoscope::gui::NeoApp::new(opts, std::sync::Arc::new(|| {}));
    app.send_as::<neoscope::gui::ModelPanel>(neoscope_api::model::ModelCommand::LoadDefault {
        options: neoscope_api::model::LoadOptions::default(),
    });
    let mut h = egui_kittest::Harness::builder()
        .with_size([1100.0, 720.0])
        .wgpu()
        .allow_missing_glyphs()
        .build_ui_state(
            |ui, app: &mut neoscope::gui::NeoApp| {
                app.poll(ui.ctx());
                app.draw(ui);
            },
            app,
        );
    settle(&mut h, std::time::Duration::from_secs(120));
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
    h
}

/// Largest absolute difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Steps the app's frames until no request is outstanding (at most `limit`), then a few more.
pub fn settle(
    h: &mut egui_kittest::Harness<'static, neoscope::gui::NeoApp>,
    limit: std::time::Duration,
) {
    let start = std::time::Instant::now();
    h.step();
    while h.state().busy() {
        assert!(
            start.elapsed() < limit,
            "engine did not finish in {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
        h.step();
    }
    h.run_steps(3);
}

/// Renders the app through wgpu into `screenshots/NAME`.
pub fn save(h: &mut egui_kittest::Harness<'static, neoscope::gui::NeoApp>, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../screenshots");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let img = h
        .render()
        .unwrap_or_else(|e| panic!("render with wgpu (needs Mesa lavapipe): {e}"));
    let path = dir.join(name);
    img.save(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    eprintln!("wrote {}", path.display());
}
