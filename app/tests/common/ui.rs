//! The app test harness (egui_kittest, headless): the real engine thread behind `NeoApp`, frames
//! stepped until the engine is idle, a tiny random model loaded through the Model panel.

use std::time::{Duration, Instant};

use candle_core::Device;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use neoscope::gui::{ModelPanel, NeoApp};
use neoscope_engine::model::save_hf_dir;
use neoscope_engine::tiny::tiny_model;
use neoscope_engine::worker::{DeviceChoice, EngineOptions};

/// `model_text`: the test shows model output, which can hold characters no bundled font draws
/// (tofu is then the honest rendering); otherwise every glyph of the app's own text must exist.
pub fn harness(dir: &std::path::Path, model_text: bool) -> Harness<'static, NeoApp> {
    let opts = EngineOptions {
        model_dir: dir.join("cache"),
        python: "python3".into(),
        device: DeviceChoice::Cpu,
    };
    let app = NeoApp::new(opts, std::sync::Arc::new(|| {}));
    let mut b = Harness::builder().with_size([1000.0, 700.0]);
    if model_text {
        b = b.allow_missing_glyphs();
    }
    b.build_ui_state(
        |ui, app: &mut NeoApp| {
            app.poll(ui.ctx());
            app.draw(ui);
        },
        app,
    )
}

/// Steps frames until the app has no request outstanding.
pub fn settle(h: &mut Harness<'static, NeoApp>) {
    let start = Instant::now();
    h.step();
    while h.state().busy() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "engine did not finish"
        );
        std::thread::sleep(Duration::from_millis(5));
        h.step();
    }
    h.step();
}

/// `settle`, then no error may be showing.
pub fn settle_ok(h: &mut Harness<'static, NeoApp>) {
    settle(h);
    assert!(
        h.state().shared.error.is_none(),
        "{:?}",
        h.state().shared.error
    );
}

/// A harness whose engine has loaded a tiny model (seed `seed`) through the Model panel.
pub fn loaded_tiny(seed: u64, dir: &std::path::Path) -> Harness<'static, NeoApp> {
    let model_dir = dir.join("tiny");
    let m = tiny_model(seed, &Device::Cpu).unwrap();
    save_hf_dir(&m.llama, &m.tokenizer, &model_dir).unwrap();
    let mut h = harness(dir, true);
    h.state_mut().panel_mut::<ModelPanel>().path_input = model_dir.display().to_string();
    h.step();
    h.get_by_label("Load").click();
    settle(&mut h);
    h
}
