//! The MFA on small problems: the Woodbury likelihood equals a dense multivariate normal, the
//! analytic gradients match finite differences, a fit recovers a planted mixture, early stopping
//! stops where the validation NLL stopped improving, the scan keeps exactly the top rows and the
//! contexts are drawn from them, zero steering is the identity, and files round-trip.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::{DType, Device, IndexOp, Tensor};
use neoscope_engine::hooks::{HookPoint, HookSpec, Positions};
use neoscope_engine::mfa::grad::nll_and_grads;
use neoscope_engine::mfa::interpret::{ContextSample, Scored, draw, scan};
use neoscope_engine::mfa::linalg::spd_inverse_logdet;
use neoscope_engine::mfa::train::{InitKind, MfaConfig, fit, mean_nll};
use neoscope_engine::mfa::{Mfa, kmeans};
use neoscope_engine::model::{Batch, PadSide};
use neoscope_engine::sampling::normal_vec;
use rand::SeedableRng;
use rand::rngs::StdRng;

fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A random MFA in f64 with K components, width D, rank R.
fn random_mfa(k: usize, d: usize, r: usize, seed: u64) -> Mfa {
    let mut rng = StdRng::seed_from_u64(seed);
    let f = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<f64>>();
    let mu = t(f(normal_vec(&mut rng, k * d, 1.0)), &[k, d]);
    let dirs = t(f(normal_vec(&mut rng, k * d * r, 1.0)), &[k, d, r]);
    let sigma = t(
        f(normal_vec(&mut rng, k * r, 0.3))
            .iter()
            .map(|x| 0.8 + x.abs())
            .collect(),
        &[k, r],
    );
    let psi = t(
        f(normal_vec(&mut rng, d, 0.2))
            .iter()
            .map(|x| 0.5 + x.abs())
            .collect(),
        &[d],
    );
    let m = Mfa::new(mu, dirs, &sigma, &psi).unwrap();
    let logits = t(f(normal_vec(&mut rng, k, 0.5)), &[k]);
    m.logits.set(&logits).unwrap();
    m
}

#[test]
fn woodbury_log_likelihood_equals_a_dense_normal() {
    let (k, d, r) = (3, 6, 2);
    let m = random_mfa(k, d, r, 1);
    let der = m.derive().unwrap();
    let mut rng = StdRng::seed_from_u64(2);
    let xs: Vec<f64> = normal_vec(&mut rng, 5 * d, 1.5)
        .into_iter()
        .map(f64::from)
        .collect();
    let x = t(xs.clone(), &[5, d]);
    let fwd = der.forward(&x).unwrap();
    let joint: Vec<Vec<f64>> = fwd.joint.to_vec2().unwrap();
    let w: Vec<f64> = der.w.flatten_all().unwrap().to_vec1().unwrap();
    let psi: Vec<f64> = der.psi.to_vec1().unwrap();
    let mu: Vec<f64> = m.mu.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
    let log_pi: Vec<f64> = der.log_pi.to_vec1().unwrap();
    for c in 0..k {
        // Dense covariance C = Ψ + W Wᵀ.
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                let ww: f64 = (0..r)
                    .map(|q| w[c * d * r + i * r + q] * w[c * d * r + j * r + q])
                    .sum();
                cov[i * d + j] = ww + if i == j { psi[i] } else { 0.0 };
            }
        }
        let (inv, logdet) = spd_inverse_logdet(&cov, d).unwrap();
        for (n, row) in joint.iter().enumerate() {
            let diff: Vec<f64> = (0..d).map(|i| xs[n * d + i] - mu[c * d + i]).collect();
            let quad: f64 = (0..d)
                .map(|i| {
                    (0..d)
                        .map(|j| diff[i] * inv[i * d + j] * diff[j])
                        .sum::<f64>()
                })
                .sum();
            let dense =
                -0.5 * ((d as f64) * (2.0 * std::f64::consts::PI).ln() + logdet + quad) + log_pi[c];
            assert!(
                (row[c] - dense).abs() < 1e-9,
                "component {c} row {n}: {} vs {dense}",
                row[c]
            );
        }
    }
}

#[test]
fn analytic_gradients_match_finite_differences() {
    let (k, d, r) = (3, 5, 2);
    let m = random_mfa(k, d, r, 3);
    let mut rng = StdRng::seed_from_u64(4);
    let x = t(
        normal_vec(&mut rng, 7 * d, 1.5)
            .into_iter()
            .map(f64::from)
            .collect(),
        &[7, d],
    );
    let der = m.derive().unwrap();
    let (_, grads) = nll_and_grads(&m, &der, &x).unwrap();
    let loss = |m: &Mfa| nll_and_grads(m, &m.derive().unwrap(), &x).unwrap().0;
    let h = 1e-6;
    for (name, var) in ["mu", "dirs", "scale", "rho", "logits"]
        .iter()
        .zip(m.vars())
    {
        let g: Vec<f64> = grads
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f64> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let shape = var.as_tensor().dims().to_vec();
        assert!(g.iter().any(|v| v.abs() > 1e-6), "{name}: gradient is zero");
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus[i] += h;
            var.set(&t(plus, &shape)).unwrap();
            let lp = loss(&m);
            let mut minus = base.clone();
            minus[i] -= h;
            var.set(&t(minus, &shape)).unwrap();
            let lm = loss(&m);
            var.set(&t(base.clone(), &shape)).unwrap();
            let fd = (lp - lm) / (2.0 * h);
            assert!(
                (fd - g[i]).abs() < 1e-5 * (1.0 + fd.abs()),
                "{name}[{i}]: analytic {} vs finite difference {fd}",
                g[i]
            );
        }
    }
}

/// Samples N points from a planted MFA with well-separated means; returns data and labels.
fn planted(n: usize, seed: u64) -> (Mfa, Tensor, Vec<usize>) {
    let (k, d, r) = (4, 16, 2);
    let truth = random_mfa(k, d, r, seed);
    truth
        .mu
        .set(&(truth.mu.as_tensor() * 4.0).unwrap())
        .unwrap();
    truth
        .logits
        .set(&Tensor::zeros(k, DType::F64, &Device::Cpu).unwrap())
        .unwrap();
    let der = truth.derive().unwrap();
    let w: Vec<f64> = der.w.flatten_all().unwrap().to_vec1().unwrap();
    let psi: Vec<f64> = der.psi.to_vec1().unwrap();
    let mu: Vec<f64> = truth
        .mu
        .as_tensor()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut rng = StdRng::seed_from_u64(seed + 100);
    let mut xs = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % k;
        labels.push(c);
        let z = normal_vec(&mut rng, r, 1.0);
        let e = normal_vec(&mut rng, d, 1.0);
        for j in 0..d {
            let wz: f64 = (0..r)
                .map(|q| w[c * d * r + j * r + q] * f64::from(z[q]))
                .sum();
            xs.push(mu[c * d + j] + wz + psi[j].sqrt() * f64::from(e[j]));
        }
    }
    (truth, t(xs, &[n, d]).to_dtype(DType::F32).unwrap(), labels)
}

#[test]
fn fit_recovers_a_planted_mixture() {
    let (truth, x, labels) = planted(4000, 7);
    let cfg = MfaConfig {
        k: 4,
        rank: 2,
        epochs: 120,
        batch: 200,
        lr: 3e-2,
        val_fraction: 0.2,
        init: InitKind::Kmeans,
        seed: 0,
        patience: None,
    };
    let (m, report) = fit(&x, &cfg, &mut |_| true).unwrap();
    let truth32 = Mfa::new(
        truth.mu.as_tensor().to_dtype(DType::F32).unwrap(),
        truth.dirs.as_tensor().to_dtype(DType::F32).unwrap(),
        &truth.derive().unwrap().sigma.to_dtype(DType::F32).unwrap(),
        &truth.derive().unwrap().psi.to_dtype(DType::F32).unwrap(),
    )
    .unwrap();
    let true_nll = mean_nll(&truth32, &x, 1000).unwrap();
    let fit_nll = mean_nll(&m, &x, 1000).unwrap();
    eprintln!(
        "planted: true NLL {true_nll:.3}, fitted {fit_nll:.3}, init val {:.3}, best val {:.3} at epoch {}",
        report.init_val_nll, report.best_val_nll, report.best_epoch
    );
    assert!(
        fit_nll < true_nll + 0.01 * true_nll.abs(),
        "fit {fit_nll} vs truth {true_nll}"
    );
    assert!(report.best_val_nll < report.init_val_nll);
    // Hard assignments against the planted labels, best over the 24 label permutations.
    let der = m.derive().unwrap();
    let joint: Vec<Vec<f32>> = der.forward(&x).unwrap().joint.to_vec2().unwrap();
    let assign: Vec<usize> = joint
        .iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap()
                .0
        })
        .collect();
    let mut best = 0usize;
    for p in permutations(4) {
        let hits = assign
            .iter()
            .zip(&labels)
            .filter(|(a, l)| p[**a] == **l)
            .count();
        best = best.max(hits);
    }
    let acc = best as f64 / labels.len() as f64;
    eprintln!("planted: assignment accuracy {acc:.4}");
    assert!(acc > 0.98, "accuracy {acc}");
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 1 {
        return vec![vec![0]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..n {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn kmeans_finds_separated_blobs_and_reseeds_nothing_empty() {
    let (_, x, labels) = planted(800, 11);
    let c = kmeans::kmeans(&x, &kmeans::KmeansConfig::for_k(4, 0), &mut |_, _| true).unwrap();
    let (ids, _) = kmeans::assign(&x, &c).unwrap();
    let mut sizes = [0usize; 4];
    for i in &ids {
        sizes[*i as usize] += 1;
    }
    assert!(sizes.iter().all(|s| *s > 0), "{sizes:?}");
    // Same cluster ⇔ same label, for all pairs of a sample.
    for i in (0..800).step_by(37) {
        for j in (0..800).step_by(41) {
            assert_eq!(ids[i] == ids[j], labels[i] == labels[j]);
        }
    }
    assert!(
        kmeans::kmeans(
            &x.i(0..3).unwrap(),
            &kmeans::KmeansConfig::for_k(4, 0),
            &mut |_, _| true
        )
        .is_err()
    );
}

#[test]
fn zero_steering_is_the_identity_and_files_round_trip() {
    let model = neoscope_engine::tiny::tiny_model(42, &Device::Cpu).unwrap();
    let d = model.llama.cfg.hidden_size;
    let mut rng = StdRng::seed_from_u64(9);
    let x = Tensor::from_vec(normal_vec(&mut rng, 600 * d, 1.0), (600, d), &Device::Cpu).unwrap();
    let cfg = MfaConfig {
        k: 3,
        rank: 2,
        epochs: 2,
        batch: 100,
        init: InitKind::RandomPoints,
        ..MfaConfig::cpu_default()
    };
    let (m, _) = fit(&x, &cfg, &mut |_| true).unwrap();
    let ids = model.tokenizer.encode("the cat and the").unwrap();
    let b = Batch::new(std::slice::from_ref(&ids), PadSide::Right, &Device::Cpu).unwrap();
    let logits = |ivs| {
        let spec = HookSpec {
            capture: Vec::new(),
            interventions: ivs,
        };
        model
            .llama
            .forward(&b, &spec, None)
            .unwrap()
            .logits
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let plain = logits(Vec::new());
    let point = HookPoint::ResidPre(1);
    let zero =
        neoscope_engine::mfa::steer::interventions(&m, point, 1, 0.0, &[0.0, 0.0], Positions::All)
            .unwrap();
    // The unhooked pass is the hand-written one, the hooked pass candle's: equal up to float
    // rounding.
    let diff = logits(zero)
        .iter()
        .zip(&plain)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "zero steering changed logits by {diff}");
    let some =
        neoscope_engine::mfa::steer::interventions(&m, point, 1, 0.5, &[1.0, -1.0], Positions::All)
            .unwrap();
    assert_eq!(some.len(), 2);
    assert_ne!(logits(some), plain);
    assert!(
        neoscope_engine::mfa::steer::interventions(&m, point, 9, 0.5, &[], Positions::All).is_err()
    );
    assert!(
        neoscope_engine::mfa::steer::interventions(&m, point, 0, 0.5, &[1.0], Positions::All)
            .is_err()
    );

    let dir = tempfile::tempdir().unwrap();
    let base = neoscope_engine::artifact::BaseModel::of(&model.info);
    let meta = neoscope_engine::mfa::file::MfaMeta {
        header: neoscope_engine::mfa::file::KIND.header(&base),
        point,
        k: 3,
        d,
        rank: 2,
        config: Some(cfg),
        report: None,
    };
    let path = dir.path().join("m");
    neoscope_engine::mfa::file::save(&path, &m, &meta).unwrap();
    let (back, meta2) = neoscope_engine::mfa::file::load(&path, &base, &Device::Cpu).unwrap();
    assert_eq!(meta2, meta);
    assert_eq!(
        mean_nll(&back, &x, 256).unwrap(),
        mean_nll(&m, &x, 256).unwrap()
    );
    let other = neoscope_engine::artifact::BaseModel {
        sha256: "other".into(),
        ..base
    };
    let err = neoscope_engine::mfa::file::load(&path, &other, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("was made for the model"), "{err}");
}

#[test]
fn early_stopping_stops_after_patience_epochs_without_improvement() {
    // Few rows and many components: the validation NLL turns up once the fit overfits.
    let (_, x, _) = planted(240, 5);
    let cfg = MfaConfig {
        k: 12,
        rank: 4,
        epochs: 300,
        batch: 32,
        lr: 5e-2,
        val_fraction: 0.3,
        init: InitKind::RandomPoints,
        seed: 1,
        patience: Some(3),
    };
    let (m, r) = fit(&x, &cfg, &mut |_| true).unwrap();
    let vals: Vec<f64> = r.epochs.iter().map(|e| e.val_nll).collect();
    eprintln!(
        "early stop: {} epochs, best {} at epoch {}",
        vals.len(),
        r.best_val_nll,
        r.best_epoch
    );
    assert!(r.stopped_early, "ran all {} epochs", vals.len());
    assert!(vals.len() < cfg.epochs);
    // It stopped exactly `patience` epochs after the best one, none of which improved on it.
    assert_eq!(r.best_epoch + 3, vals.len());
    // (Epoch e is vals[e - 1].)
    assert_eq!(vals[r.best_epoch - 1], r.best_val_nll);
    assert!(vals[r.best_epoch..].iter().all(|v| *v >= r.best_val_nll));
    assert!(vals[..r.best_epoch - 1].iter().all(|v| *v > r.best_val_nll));
    // The best epoch's parameters are the ones returned.
    let (_, val) = neoscope_engine::mfa::train::split(&x, cfg.val_fraction, cfg.seed).unwrap();
    let back = mean_nll(&m, &val, 1024).unwrap();
    assert!((back - r.best_val_nll).abs() < 1e-4 * r.best_val_nll.abs());
    // Without patience the same fit runs every epoch.
    let all = MfaConfig {
        epochs: vals.len() + 2,
        patience: None,
        ..cfg
    };
    let (_, r2) = fit(&x, &all, &mut |_| true).unwrap();
    assert!(!r2.stopped_early);
    assert_eq!(r2.epochs.len(), all.epochs);
}

#[test]
fn scan_keeps_exactly_the_top_rows_and_draws_come_from_them() {
    let (truth, x, _) = planted(600, 9);
    let m32 = Mfa::new(
        truth.mu.as_tensor().to_dtype(DType::F32).unwrap(),
        truth.dirs.as_tensor().to_dtype(DType::F32).unwrap(),
        &truth.derive().unwrap().sigma.to_dtype(DType::F32).unwrap(),
        &truth.derive().unwrap().psi.to_dtype(DType::F32).unwrap(),
    )
    .unwrap();
    let s = scan(&m32, &x, 50, &|| false).unwrap();
    assert_eq!(s.pool, 50);
    // Brute force: every row's component log-likelihood, sorted.
    let der = m32.derive().unwrap();
    let f = der.forward(&x).unwrap();
    let joint: Vec<Vec<f32>> = f.joint.to_vec2().unwrap();
    let log_pi: Vec<f32> = der.log_pi.to_vec1().unwrap();
    for c in 0..4 {
        let mut all: Vec<(usize, f32)> = joint
            .iter()
            .enumerate()
            .map(|(r, j)| (r, j[c] - log_pi[c]))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let want: Vec<usize> = all.iter().take(50).map(|a| a.0).collect();
        let got: Vec<usize> = s.by_likelihood[c].iter().map(|x| x.row).collect();
        assert_eq!(got, want, "component {c}");
        assert_eq!(s.by_responsibility[c].len(), 50);
    }
    // Draws: n distinct rows from the first `pool`, best first, fixed by the seed.
    let top: Vec<Scored> = (0..100)
        .map(|i| Scored {
            row: i,
            score: 100.0 - i as f32,
        })
        .collect();
    let how = ContextSample {
        n: 10,
        pool: 40,
        seed: 3,
    };
    let a = draw(&top, &how, 0);
    assert_eq!(a.len(), 10);
    assert!(a.iter().all(|x| x.row < 40));
    assert!(a.windows(2).all(|w| w[0].score > w[1].score));
    assert_eq!(draw(&top, &how, 0), a);
    assert_ne!(draw(&top, &ContextSample { seed: 4, ..how }, 0), a);
    assert_ne!(draw(&top, &how, 1), a, "each component draws its own");
    // A pool larger than what was kept draws from all of it; n above the pool shows the pool.
    assert_eq!(
        draw(&top[..5], &how, 0)
            .iter()
            .map(|x| x.row)
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    // The draw reaches beyond the first n (it is not just the top n).
    let reach = (0..20)
        .flat_map(|salt| draw(&top, &how, salt))
        .map(|x| x.row)
        .max()
        .unwrap();
    assert!(reach >= 30, "draws stayed among the top {reach}");
}
