//! Steering toward an MFA component: prompt, centroid weight, the layers steered at once, the
//! latent offset; the promoted and suppressed tokens as labelled bars, and the steered and plain
//! generations side by side.

use neoscope_api::Command;
use neoscope_api::mfa::{MfaCommand, SteerPositions};
use neoscope_api::steer::Steer;

use super::mfa_panel::MfaPanel;
use super::panel::{Message, Shared};
use super::widgets::{ragged, shift_bars};

/// Parses a comma-separated list of layers below `n_layers` (empty: none).
pub fn parse_layers(text: &str, n_layers: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let l: usize = part
            .parse()
            .map_err(|_| format!("\"{part}\" is not a layer number"))?;
        if l >= n_layers {
            return Err(format!(
                "layer {l} is out of range: the model has layers 0..{}",
                n_layers.saturating_sub(1)
            ));
        }
        if !out.contains(&l) {
            out.push(l);
        }
    }
    Ok(out)
}

pub(super) fn steering(p: &mut MfaPanel, s: &mut Shared, ui: &mut egui::Ui) {
    let Some(k) = p.selected else { return };
    ui.strong(format!("Steer toward component {k}"));
    let n_layers = s.model_info().map_or(1, |i| i.dims.n_layers);
    let fitted_layer = p.fitted.as_ref().and_then(|f| f.point.layer());
    ui.add(
        egui::TextEdit::singleline(&mut p.prompt)
            .desired_width(f32::INFINITY)
            .hint_text("prompt"),
    );
    ui.add(egui::Slider::new(&mut p.alpha, 0.0..=1.0).text("alpha (centroid)"));
    ui.horizontal(|ui| {
        ui.label("layers");
        ui.add(
            egui::TextEdit::singleline(&mut p.steer_layers)
                .desired_width(90.0)
                .hint_text(fitted_layer.map_or_else(|| "fitted".to_owned(), |l| l.to_string())),
        )
        .on_hover_text("Steer these layers' resid_post at once, e.g. 3,4,5 (empty: the layer the MFA was fitted at). The component lives in the space of its own layer; other layers are an experiment.");
        ui.checkbox(&mut p.last_only, "last position only");
    });
    let layers = parse_layers(&p.steer_layers, n_layers);
    if let Err(e) = &layers {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
    ui.collapsing("latent offset z", |ui| {
        for (i, z) in p.z.iter_mut().enumerate() {
            ui.add(egui::Slider::new(z, -30.0..=30.0).text(format!("z{i}")));
        }
        if ui.small_button("reset z").clicked() {
            p.z.iter_mut().for_each(|z| *z = 0.0);
        }
    });
    let mut go = false;
    let mut to_lens = false;
    ui.horizontal(|ui| {
        if p.steering.is_some() {
            ui.spinner();
        } else {
            go = ui
                .add_enabled(layers.is_ok(), egui::Button::new("Steer"))
                .clicked();
        }
        to_lens = ui
            .button("Use in Lens")
            .on_hover_text("Apply this steering to lens runs")
            .clicked();
    });
    if go && let Ok(layers) = layers {
        let c = MfaCommand::Steer {
            prompt: p.prompt.clone(),
            chat: false,
            component: k,
            alpha: p.alpha,
            z: p.z.clone(),
            layers,
            positions: if p.last_only {
                SteerPositions::Last
            } else {
                SteerPositions::All
            },
            top: 10,
            max_new_tokens: 20,
        };
        p.steering = s.send(Command::Mfa(c));
    }
    if to_lens {
        s.post(Message::SteerLens(Steer::MfaComponent {
            component: k,
            alpha: p.alpha,
            z: p.z.clone(),
        }));
        s.goto("Lens");
    }
    let Some(r) = &p.steer else { return };
    shift_bars(ui, &r.promoted, &r.suppressed);
    ui.columns(2, |cols| {
        cols[0].strong("steered");
        ragged(&mut cols[0], format!("{}{}", r.prompt, r.steered));
        cols[1].strong("plain");
        ragged(&mut cols[1], format!("{}{}", r.prompt, r.plain));
    });
}
