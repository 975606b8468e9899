//! The hand-written word-gradient pass (`words::grad`) against candle's autograd on the same
//! graph and against finite differences: several words, repeated occurrences, injection into a
//! later layer, sequences of different lengths, one without any word, both losses.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] functions")]

use candle_core::{Device, Tensor, Var};
use neoscope_engine::model::LoadedModel;
use neoscope_engine::tiny::tiny_model;
use neoscope_engine::words::grad;
use neoscope_engine::words::train::{ScoredSeq, scored_seq, seq_logprobs};
use neoscope_engine::words::{Init, Injection, Word};

fn word(m: &LoadedModel, name: &str, injection: Injection, seed: u64) -> Word {
    Word::create(m, name, Init::Random { std: 0.5, seed }, injection).unwrap()
}

fn seqs(m: &LoadedModel) -> Vec<ScoredSeq> {
    let names = ["<a>", "<b>"];
    [
        ("the <a> and <b> then <a>", " the cat sat"),
        ("an ant", " the hat"),
        ("<b>:", " then the ant and the cat"),
        ("this is the long one with <a> late", " an"),
    ]
    .iter()
    .map(|(p, c)| scored_seq(m, p, c, &names).unwrap())
    .collect()
}

/// Autograd gradient of `Σ coef[t] · log p[t]` (per-sequence sums weighted per sequence).
fn autograd(
    m: &LoadedModel,
    words: &[Word],
    seqs: &[&ScoredSeq],
    per_seq: &[f32],
) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let vars: Vec<Var> = words
        .iter()
        .map(|w| Var::from_slice(&w.vector, w.vector.len(), &dev).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let lp = seq_logprobs(m, words, &tensors, seqs).unwrap();
    let w = Tensor::from_slice(per_seq, per_seq.len(), &dev).unwrap();
    let grads = (lp * w).unwrap().sum_all().unwrap().backward().unwrap();
    vars.iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().to_vec1::<f32>().unwrap())
        .collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn hand_gradient_equals_autograd_for_every_injection() {
    let m = tiny_model(42, &Device::Cpu).unwrap();
    let all = seqs(&m);
    let refs: Vec<&ScoredSeq> = all.iter().collect();
    let per_seq = [0.7f32, -1.3, 0.4, 2.0];
    for (ia, ib) in [
        (Injection::Embedding, Injection::Embedding),
        (Injection::ResidPre(1), Injection::Embedding),
        (Injection::ResidPre(1), Injection::ResidPre(1)),
    ] {
        let words = [word(&m, "<a>", ia, 1), word(&m, "<b>", ib, 2)];
        assert!(grad::supported(&m.llama, &words));
        let vectors: Vec<&[f32]> = words.iter().map(|w| w.vector.as_slice()).collect();
        let tape = grad::forward(&m.llama, &words, &vectors, &refs, &[]).unwrap();
        // Same log-probabilities as the hooked forward pass.
        let want = seq_logprobs(
            &m,
            &words,
            &words
                .iter()
                .map(|w| Tensor::from_slice(&w.vector, w.vector.len(), &Device::Cpu).unwrap())
                .collect::<Vec<_>>(),
            &refs,
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        for (a, b) in tape.seq_logprobs().iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{ia:?}/{ib:?}: {a} vs {b}"
            );
        }
        let coef: Vec<f32> = tape.target_seqs().map(|s| per_seq[s]).collect();
        let hand = tape.backward(&m.llama, &coef).unwrap();
        let auto = autograd(&m, &words, &refs, &per_seq);
        for (wi, (h, a)) in hand.iter().zip(&auto).enumerate() {
            let norm = a.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!(norm > 1e-3, "{ia:?}/{ib:?} word {wi}: zero gradient");
            let diff = max_rel_diff(h, a);
            assert!(
                diff < 1e-4,
                "{ia:?}/{ib:?} word {wi}: hand vs autograd differ by {diff}"
            );
        }
    }
}

#[test]
fn preference_gradient_matches_finite_differences() {
    let m = tiny_model(7, &Device::Cpu).unwrap();
    let words = [
        word(&m, "<a>", Injection::Embedding, 3),
        word(&m, "<b>", Injection::Embedding, 4),
    ];
    let names = ["<a>", "<b>"];
    let pairs: Vec<ScoredSeq> = [
        ("the <a> is", " the cat"),
        ("the <a> is", " an ant"),
        ("<b> and <a>", " then"),
        ("<b> and <a>", " the hat and"),
    ]
    .iter()
    .map(|(p, c)| scored_seq(&m, p, c, &names).unwrap())
    .collect();
    let refs: Vec<&ScoredSeq> = pairs.iter().collect();
    let ref_lp = [-9.0f32, -8.5, -4.0, -12.0];
    let beta = 0.5;
    let loss = |vectors: &[Vec<f32>]| -> f64 {
        let v: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        let tape = grad::forward(&m.llama, &words, &v, &refs, &[]).unwrap();
        f64::from(grad::preference(&tape, &ref_lp, beta).0)
    };
    let base: Vec<Vec<f32>> = words.iter().map(|w| w.vector.clone()).collect();
    let v: Vec<&[f32]> = base.iter().map(Vec::as_slice).collect();
    let tape = grad::forward(&m.llama, &words, &v, &refs, &[]).unwrap();
    let (_, coef) = grad::preference(&tape, &ref_lp, beta);
    let g = tape.backward(&m.llama, &coef).unwrap();
    for (wi, i) in [(0usize, 0usize), (0, 13), (1, 5), (1, 30)] {
        let h = 1e-2f32;
        let mut plus = base.clone();
        plus[wi][i] += h;
        let mut minus = base.clone();
        minus[wi][i] -= h;
        let fd = (loss(&plus) - loss(&minus)) / (2.0 * f64::from(h));
        let got = f64::from(g[wi][i]);
        assert!(
            (fd - got).abs() < 2e-2 * (1.0 + got.abs()),
            "word {wi} coord {i}: hand {got} vs finite difference {fd}"
        );
    }
    let norm: f32 = g.iter().flatten().map(|v| v * v).sum::<f32>().sqrt();
    assert!(norm > 1e-4, "zero preference gradient");
}

#[test]
fn cross_entropy_is_the_mean_of_per_sequence_means() {
    let m = tiny_model(42, &Device::Cpu).unwrap();
    let all = seqs(&m);
    let refs: Vec<&ScoredSeq> = all.iter().collect();
    let words = [
        word(&m, "<a>", Injection::Embedding, 1),
        word(&m, "<b>", Injection::Embedding, 2),
    ];
    let v: Vec<&[f32]> = words.iter().map(|w| w.vector.as_slice()).collect();
    let tape = grad::forward(&m.llama, &words, &v, &refs, &[]).unwrap();
    let (loss, coef) = grad::cross_entropy(&tape);
    let want: f32 = -all
        .iter()
        .zip(tape.seq_logprobs())
        .map(|(s, lp)| lp / s.targets.len() as f32)
        .sum::<f32>()
        / all.len() as f32;
    assert!((loss - want).abs() < 1e-5);
    let wsum: f32 = coef.iter().sum();
    assert!(
        (wsum + 1.0).abs() < 1e-5,
        "coefficients sum to -1, got {wsum}"
    );
}

#[test]
fn cached_prefixes_change_nothing() {
    let m = tiny_model(42, &Device::Cpu).unwrap();
    let all = seqs(&m);
    let refs: Vec<&ScoredSeq> = all.iter().collect();
    for (ia, ib) in [
        (Injection::Embedding, Injection::Embedding),
        (Injection::ResidPre(1), Injection::Embedding),
    ] {
        let words = [word(&m, "<a>", ia, 1), word(&m, "<b>", ib, 2)];
        let v: Vec<&[f32]> = words.iter().map(|w| w.vector.as_slice()).collect();
        let plain = grad::forward(&m.llama, &words, &v, &refs, &[]).unwrap();
        let kv = grad::prefix_kv(&m.llama, &refs).unwrap();
        let cached: Vec<Option<&grad::PrefixKv>> = kv.iter().map(Some).collect();
        let fast = grad::forward(&m.llama, &words, &v, &refs, &cached).unwrap();
        for (a, b) in fast.logprobs().iter().zip(plain.logprobs()) {
            assert!((a - b).abs() < 1e-5, "{ia:?}: {a} vs {b}");
        }
        let (_, coef) = grad::cross_entropy(&plain);
        let g0 = plain.backward(&m.llama, &coef).unwrap();
        let g1 = fast.backward(&m.llama, &coef).unwrap();
        for (a, b) in g1.iter().zip(&g0) {
            let diff = max_rel_diff(a, b);
            assert!(diff < 1e-5, "{ia:?}: gradients differ by {diff}");
        }
    }
    // A prefix made for another sequence is refused.
    let words = [
        word(&m, "<a>", Injection::Embedding, 1),
        word(&m, "<b>", Injection::Embedding, 2),
    ];
    let v: Vec<&[f32]> = words.iter().map(|w| w.vector.as_slice()).collect();
    let kv = grad::prefix_kv(&m.llama, &refs).unwrap();
    let swapped: Vec<Option<&grad::PrefixKv>> =
        vec![Some(&kv[3]), Some(&kv[1]), Some(&kv[2]), Some(&kv[0])];
    let err = grad::forward(&m.llama, &words, &v, &refs, &swapped)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("prefix"), "{err}");
}
