//! The geometry report as one self-contained HTML page: tables and inline SVG figures (loss
//! curves, norm and cosine histograms, drift, a PCA scatter), no scripts, no external files.
//! The SVG is written here directly: a charting crate would need a font backend for its text,
//! and these four figure kinds are a few lines each.

use std::fmt::Write as _;

use super::report::{GeometryReport, Histogram};
use crate::stats::{Summary, TestResult};
use neoscope_api::align::AlignedRows;
use neoscope_api::inject::MorphemeComparison;

const W: f64 = 460.0;
const H: f64 = 240.0;
const PAD: f64 = 40.0;
const COLORS: [&str; 3] = ["#4C72B0", "#DD8452", "#55A868"];

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn frame(title: &str, body: &str, legend: &[(&str, &str)], x_lo: f64, x_hi: f64) -> String {
    let mut s = format!(
        "<figure><svg viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" \
         xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"11\">\
         <rect x=\"{PAD}\" y=\"10\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#ccc\"/>{body}\
         <text x=\"{PAD}\" y=\"{}\">{x_lo:.3}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{x_hi:.3}</text>",
        W - PAD - 10.0,
        H - PAD - 10.0,
        H - PAD + 14.0,
        W - 10.0,
        H - PAD + 14.0
    );
    for (i, (name, color)) in legend.iter().filter(|l| !l.0.is_empty()).enumerate() {
        let y = 24.0 + 14.0 * f64::from(u8::try_from(i).unwrap_or(0));
        let _ = write!(
            s,
            "<rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            W - 120.0,
            y - 9.0,
            W - 106.0,
            y,
            esc(name)
        );
    }
    let _ = write!(s, "</svg><figcaption>{}</figcaption></figure>", esc(title));
    s
}

fn sx(x: f64, lo: f64, hi: f64) -> f64 {
    PAD + (x - lo) / (hi - lo).max(1e-12) * (W - PAD - 10.0)
}

fn sy(y: f64, lo: f64, hi: f64) -> f64 {
    H - PAD - (y - lo) / (hi - lo).max(1e-12) * (H - PAD - 10.0)
}

/// Overlaid histograms, each series normalised to its own total (densities comparable).
fn histogram_svg(title: &str, h: &Histogram) -> String {
    let dens: Vec<Vec<f64>> = h
        .series
        .iter()
        .map(|(_, c)| {
            let t: usize = c.iter().sum();
            c.iter().map(|v| *v as f64 / t.max(1) as f64).collect()
        })
        .collect();
    let top = dens.iter().flatten().copied().fold(0.0f64, f64::max);
    let mut body = String::new();
    for (k, d) in dens.iter().enumerate() {
        let bw = (h.hi - h.lo) / d.len() as f64;
        let mut pts = String::new();
        for (i, v) in d.iter().enumerate() {
            let x0 = h.lo + i as f64 * bw;
            let _ = write!(
                pts,
                "{:.1},{:.1} {:.1},{:.1} ",
                sx(x0, h.lo, h.hi),
                sy(*v, 0.0, top),
                sx(x0 + bw, h.lo, h.hi),
                sy(*v, 0.0, top)
            );
        }
        let _ = write!(
            body,
            "<polyline points=\"{pts}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"/>",
            COLORS[k % 3]
        );
    }
    let legend: Vec<(&str, &str)> = h
        .series
        .iter()
        .enumerate()
        .map(|(k, (n, _))| (n.as_str(), COLORS[k % 3]))
        .collect();
    frame(title, &body, &legend, h.lo, h.hi)
}

fn lines_svg(title: &str, series: &[(&str, Vec<(f64, f64)>)]) -> String {
    let all = || series.iter().flat_map(|(_, p)| p.iter());
    let (x_lo, x_hi) = (
        all().map(|p| p.0).fold(f64::INFINITY, f64::min),
        all().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max),
    );
    let (y_lo, y_hi) = (
        all().map(|p| p.1).fold(f64::INFINITY, f64::min),
        all().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max),
    );
    if !x_lo.is_finite() {
        return String::new();
    }
    let mut body = String::new();
    for (k, (_, pts)) in series.iter().enumerate() {
        let p: String = pts
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1} ", sx(*x, x_lo, x_hi), sy(*y, y_lo, y_hi)))
            .collect();
        let _ = write!(
            body,
            "<polyline points=\"{p}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.6\"/>",
            COLORS[k % 3]
        );
        for (x, y) in pts.iter().filter(|_| pts.len() < 30) {
            let _ = write!(
                body,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"2.5\" fill=\"{}\"/>",
                sx(*x, x_lo, x_hi),
                sy(*y, y_lo, y_hi),
                COLORS[k % 3]
            );
        }
    }
    let _ = write!(
        body,
        "<text x=\"4\" y=\"16\">{y_hi:.2}</text><text x=\"4\" y=\"{}\">{y_lo:.2}</text>",
        H - PAD
    );
    let legend: Vec<(&str, &str)> = series
        .iter()
        .enumerate()
        .map(|(k, (n, _))| (*n, COLORS[k % 3]))
        .collect();
    frame(title, &body, &legend, x_lo, x_hi)
}

fn scatter_svg(title: &str, names: [&str; 2], base: &[[f32; 2]], new: &[[f32; 2]]) -> String {
    let all = || {
        base.iter()
            .chain(new)
            .map(|p| [f64::from(p[0]), f64::from(p[1])])
    };
    let (mut x_lo, mut x_hi, mut y_lo, mut y_hi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for p in all() {
        (x_lo, x_hi, y_lo, y_hi) = (
            x_lo.min(p[0]),
            x_hi.max(p[0]),
            y_lo.min(p[1]),
            y_hi.max(p[1]),
        );
    }
    // A degenerate axis (all points equal on it) gets a unit span.
    if x_hi <= x_lo {
        (x_lo, x_hi) = (x_lo - 0.5, x_lo + 0.5);
    }
    if y_hi <= y_lo {
        (y_lo, y_hi) = (y_lo - 0.5, y_lo + 0.5);
    }
    let mut body = String::new();
    for (pts, color, r) in [(base, COLORS[0], 1.2), (new, COLORS[1], 1.6)] {
        for p in pts {
            let _ = write!(
                body,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{r}\" fill=\"{color}\" fill-opacity=\"0.5\"/>",
                sx(f64::from(p[0]), x_lo, x_hi),
                sy(f64::from(p[1]), y_lo, y_hi)
            );
        }
    }
    frame(
        title,
        &body,
        &[(names[0], COLORS[0]), (names[1], COLORS[1])],
        x_lo,
        x_hi,
    )
}

fn summary_row(name: &str, s: &Summary) -> String {
    format!(
        "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
        esc(name),
        s.n,
        s.mean,
        s.std,
        s.min,
        s.median,
        s.max
    )
}

fn test_row(name: &str, t: &TestResult) -> String {
    let df = t.df.map_or(String::new(), |d| format!("{d:.1}"));
    format!(
        "<tr><td>{}</td><td>{:.4}</td><td>{df}</td><td>{:.3e}</td></tr>",
        esc(name),
        t.statistic,
        t.p_value
    )
}

const SUMMARY_HEAD: &str =
    "<tr><th></th><th>n</th><th>mean</th><th>std</th><th>min</th><th>median</th><th>max</th></tr>";
const TEST_HEAD: &str = "<tr><th>test</th><th>statistic</th><th>df</th><th>p</th></tr>";

/// Renders the report as a self-contained HTML page.
pub fn render(r: &GeometryReport) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Neoscope geometry report</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ddd;padding:2px 8px;\
         text-align:right}}td:first-child{{text-align:left}}figure{{display:inline-block;margin:.5em}}\
         figcaption{{font-size:90%;color:#555}}</style></head><body>\
         <h1>Geometry report</h1><p>Base model <b>{}</b>: {} base rows; {} new rows \
         ({} lexicon forms were already single tokens); {} training steps.</p>",
        esc(&r.header.base_model.name),
        r.n_base,
        r.n_new,
        r.n_known,
        r.steps
    );
    let losses: Vec<(f64, f64)> = r
        .losses
        .iter()
        .enumerate()
        .map(|(i, l)| ((i + 1) as f64, f64::from(*l)))
        .collect();
    let val: Vec<(f64, f64)> = r
        .val
        .iter()
        .map(|(s, l)| (*s as f64, f64::from(*l)))
        .collect();
    let _ = write!(s, "<h2>Training</h2>");
    if let (Some(first), Some(last)) = (r.val.first(), r.val.last()) {
        let _ = write!(
            s,
            "<p>Validation loss {:.4} (step {}) → {:.4} (step {}).</p>",
            first.1, first.0, last.1, last.0
        );
    }
    s.push_str(&lines_svg(
        "Loss per step (train) and on held-out blocks (validation)",
        &[("train", losses), ("validation", val)],
    ));
    if !r.phases.is_empty() {
        s.push_str(
            "<table><tr><th>stage</th><th>step</th><th>held-out loss</th><th>perplexity</th></tr>",
        );
        for p in &r.phases {
            let _ = write!(
                s,
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.2}</td></tr>",
                esc(&p.phase),
                p.step,
                p.val_loss,
                p.perplexity
            );
        }
        s.push_str("</table>");
    }
    if let Some(c) = &r.change {
        let _ = write!(
            s,
            "<h2>Change per form</h2><p>Nearest {} base rows kept from initial to trained: mean \
             {:.3} (median {:.3}); norm change mean {:+.3} (min {:+.3}, max {:+.3}); PIP loss \
             ‖AAᵀ − BBᵀ‖ {:.3} ({:.3} of ‖AAᵀ‖). Fewest kept: {}.</p>{}{}{}",
            c.k,
            c.overlap.mean,
            c.overlap.median,
            c.norm_change.mean,
            c.norm_change.min,
            c.norm_change.max,
            c.pip_loss,
            c.pip_relative,
            c.least_overlap
                .iter()
                .map(|(f, o)| format!("{} ({o:.1})", esc(f)))
                .collect::<Vec<_>>()
                .join(", "),
            histogram_svg(
                "Neighbour overlap per form (share of forms)",
                &c.overlap_hist
            ),
            histogram_svg("Norm change per form (share of forms)", &c.norm_change_hist),
            scatter_svg(
                "Norm change (x) against neighbour overlap (y)",
                ["", "forms"],
                &[],
                &c.scatter
            ),
        );
    }
    if let Some(mc) = &r.morphemes {
        s.push_str("<h2>Forms and their parts</h2>");
        morpheme_table(&mut s, mc, "initially", "trained");
    }
    if let Some(a) = &r.aligned {
        aligned_section(&mut s, a);
    }
    let n = &r.norms;
    let _ = write!(
        s,
        "<h2>Norms</h2><table>{SUMMARY_HEAD}{}{}</table><table>{TEST_HEAD}{}{}</table>\
         <p>Cohen's d (base − new, pooled sd): {:.3}</p>{}",
        summary_row("base", &n.base),
        summary_row("new", &n.new),
        test_row("Welch t", &n.welch),
        test_row("Mann-Whitney U", &n.mann_whitney),
        n.cohen_d,
        histogram_svg("L2 norms (density)", &n.hist)
    );
    let i = &r.isotropy;
    let _ = write!(
        s,
        "<h2>Isotropy</h2><p>Mu et al. (2018): min Z(c) / max Z(c), Z(c) = Σ exp(cᵀw) over the \
         eigenvectors ±c of WᵀW; 1 is perfectly isotropic.</p><table><tr><th></th><th>isotropy</th></tr>\
         <tr><td>base</td><td>{:.4e}</td></tr><tr><td>new (initial)</td><td>{:.4e}</td></tr>\
         <tr><td>new (trained)</td><td>{:.4e}</td></tr></table>",
        i.base, i.new_initial, i.new
    );
    let d = &r.drift;
    let list = |v: &[(String, f64)]| {
        v.iter()
            .map(|(f, c)| format!("{} ({c:.3})", esc(f)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        s,
        "<h2>Drift</h2><p>Base rows unchanged (hash of the base matrix equal to the run's start): \
         <b>{}</b>. Cosine between each new row's initial and trained vector:</p>\
         <table>{SUMMARY_HEAD}{}</table>{}<p>Moved most: {}</p><p>Moved least: {}</p><p>Every form's cosine is in \
         <code>report.json</code> (<code>drift.per_form</code>).</p>",
        if d.base_identical { "yes" } else { "NO" },
        summary_row("new", &d.new),
        histogram_svg("cos(initial, trained) of new rows", &d.hist),
        list(&d.most),
        list(&d.least)
    );
    let _ = write!(
        s,
        "<h2>Nearest base neighbours</h2><table><tr><th>form</th><th>before training</th><th>after training</th></tr>"
    );
    let fmt = |v: &[(String, f32)]| {
        v.iter()
            .map(|(t, c)| format!("{} {c:.2}", esc(&format!("{t:?}"))))
            .collect::<Vec<_>>()
            .join(" · ")
    };
    for nb in &r.neighbors {
        let _ = write!(
            s,
            "<tr><td>{}</td><td style=\"text-align:left\">{}</td><td style=\"text-align:left\">{}</td></tr>",
            esc(&nb.form),
            fmt(&nb.before),
            fmt(&nb.after)
        );
    }
    let p = &r.pca;
    let pw = &r.pairwise;
    let _ = write!(
        s,
        "</table><h2>Intrinsic dimensionality (PCA)</h2><table><tr><th></th><th>90%</th><th>95%</th></tr>\
         <tr><td>base</td><td>{}</td><td>{}</td></tr><tr><td>new</td><td>{}</td><td>{}</td></tr></table>{}\
         <h2>Pairwise cosine similarity</h2><p>{} random pairs per distribution.</p>\
         <table>{SUMMARY_HEAD}{}{}{}</table><table>{TEST_HEAD}{}{}{}</table>{}</body></html>",
        p.base_90,
        p.base_95,
        p.new_90,
        p.new_95,
        scatter_svg(
            "First two principal components of the base rows",
            ["base (sample)", "new"],
            &r.scatter_base,
            &r.scatter_new
        ) + &tsne_figure(r),
        pw.pairs,
        summary_row("base-base", &pw.base_base),
        summary_row("new-new", &pw.new_new),
        summary_row("base-new", &pw.base_new),
        test_row("KS base-base vs new-new", &pw.ks_bb_nn),
        test_row("KS base-base vs base-new", &pw.ks_bb_bn),
        test_row("KS new-new vs base-new", &pw.ks_nn_bn),
        histogram_svg("Pairwise cosine (density)", &pw.hist)
    );
    s
}

/// A split-form comparison: the summary line and the examples.
fn morpheme_table(s: &mut String, mc: &MorphemeComparison, before: &str, after: &str) {
    let _ = write!(
        s,
        "<p>{} split forms; cosine of a form's row to the mean of its parts' vectors: {:.3} \
         {before} (median {:.3}), {:.3} {after} (median {:.3}).</p><table><tr><th>form</th>\
         <th>parts</th><th>{before}</th><th>{after}</th></tr>",
        mc.forms, mc.before.mean, mc.before.median, mc.after.mean, mc.after.median
    );
    for (f, parts, b, a) in &mc.examples {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{b:.3}</td><td>{a:.3}</td></tr>",
            esc(f),
            esc(parts)
        );
    }
    s.push_str("</table>");
}

/// Phase 3: its objective's terms at the first and last step, and the forms against their parts.
fn aligned_section(s: &mut String, a: &AlignedRows) {
    let c = &a.config;
    let _ = write!(
        s,
        "<h2>Phase 3: morpheme-compositional alignment</h2><p>{} steps of {:?} (lr {}) on \
         L = L_lm + {}·L_morpheme + {}·L_repulsion + {}·L_norm, {}. L_morpheme: mean squared \
         difference between a split form's row and the mean of its parts' vectors; L_repulsion: \
         mean of max(0, cos − {})² over {} random pairs of new rows per step; L_norm: mean of \
         max(0, |‖e‖ − μ| − σ)² with μ, σ the base rows' norm mean and standard deviation.</p>\
         <table><tr><th>step</th><th>L_lm</th><th>L_morpheme</th><th>L_repulsion</th>\
         <th>L_norm</th></tr>",
        a.step,
        c.optimizer,
        c.lr,
        c.lambda_morpheme,
        c.lambda_repulsion,
        c.lambda_norm,
        a.lora_step
            .map_or("on the base weights".to_owned(), |st| format!(
                "under the phase-2 adapters of step {st}"
            )),
        c.repulsion_threshold,
        c.repulsion_pairs,
    );
    for (step, t) in [(1, &a.first), (a.step, &a.last)] {
        let _ = write!(
            s,
            "<tr><td>{step}</td><td>{:.4}</td><td>{:.3e}</td><td>{:.3e}</td><td>{:.3e}</td></tr>",
            t.lm, t.morpheme, t.repulsion, t.norm
        );
    }
    s.push_str("</table>");
    if let Some(mc) = &a.morphemes {
        morpheme_table(s, mc, "before phase 3", "after");
    }
}

/// The joint t-SNE of sampled forms' initial and trained rows (empty without one).
fn tsne_figure(r: &GeometryReport) -> String {
    if r.tsne_initial.is_empty() {
        return String::new();
    }
    format!(
        "<h2>Initial against trained rows (t-SNE)</h2><p>{} sampled forms: each form's initial \
         row (its composition centroid, or a random direction for spherical init) and its \
         trained row, embedded together by t-SNE (perplexity ≤ 10, 500 iterations). Trained \
         points that stay beside their centroids' cluster kept their composition; points that \
         leave it were moved by the corpus.</p>{}",
        r.tsne_initial.len(),
        scatter_svg(
            "t-SNE of initial and trained rows",
            ["initial", "trained"],
            &r.tsne_initial,
            &r.tsne_trained
        )
    )
}
