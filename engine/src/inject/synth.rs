//! Synthetic lexicons: invented forms `prefix + root + suffix` drawn from a morpheme table (each
//! morpheme weighted by how many examples it has, as a proxy for frequency) and a list of roots,
//! and short sentences that use each form before its root, so training has context to learn.

use std::collections::HashSet;

use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use super::lexicon::{Affix, Morpheme};
use crate::error::{EngineError, Result};

const VOWELS: &[char] = &['a', 'e', 'i', 'o', 'u', 'y'];

/// Joins a root and a suffix, dropping a final `e` before a vowel (`dance + ing → dancing`).
fn join(a: &str, b: &str) -> String {
    if a.ends_with('e') && b.starts_with(VOWELS) {
        format!("{}{b}", &a[..a.len() - 1])
    } else {
        format!("{a}{b}")
    }
}

/// `count` distinct forms, each with at least one affix; none equals a root. Seeded.
pub fn forms(
    morphemes: &[Morpheme],
    roots: &[String],
    count: usize,
    seed: u64,
) -> Result<Vec<(String, String)>> {
    let weighted = |a: Affix| -> Vec<(&Morpheme, usize)> {
        morphemes
            .iter()
            .filter(|m| m.affix == a)
            .map(|m| (m, 1 + m.examples.len()))
            .collect()
    };
    let (pre, suf) = (weighted(Affix::Prefix), weighted(Affix::Suffix));
    if pre.is_empty() || suf.is_empty() || roots.is_empty() {
        return Err(EngineError::Invalid(
            "generating forms needs at least one prefix, one suffix and one root".into(),
        ));
    }
    // Each form is a root with a prefix, a suffix or both: no more distinct forms exist.
    let most = roots
        .len()
        .saturating_mul((pre.len() + 1) * (suf.len() + 1) - 1);
    if count > most {
        return Err(EngineError::Invalid(format!(
            "{count} forms asked for, but {} prefixes, {} suffixes and {} roots make at most \
             {most} distinct forms",
            pre.len(),
            suf.len(),
            roots.len()
        )));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let root_set: HashSet<&str> = roots.iter().map(String::as_str).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(count);
    let limit = count.saturating_mul(50).max(1000);
    for _ in 0..limit {
        if out.len() == count {
            break;
        }
        let root = roots.choose(&mut rng).map_or("", String::as_str);
        let use_pre = rng.random_bool(0.7);
        let use_suf = !use_pre || rng.random_bool(0.6);
        let mut form = String::new();
        if use_pre {
            let p = pre
                .choose_weighted(&mut rng, |x| x.1)
                .map_or("", |x| &x.0.text);
            form.push_str(p);
        }
        form.push_str(root);
        if use_suf {
            let s = suf
                .choose_weighted(&mut rng, |x| x.1)
                .map_or("", |x| &x.0.text);
            form = join(&form, s);
        }
        if !root_set.contains(form.as_str()) && seen.insert(form.clone()) {
            out.push((form, root.to_owned()));
        }
    }
    if out.len() < count {
        return Err(EngineError::Invalid(format!(
            "only {} distinct forms could be made from this table and roots (asked for {count})",
            out.len()
        )));
    }
    Ok(out)
}

/// Short frames that put the root after the form, so a form's vector can learn to predict its
/// root: what one sentence teaches carries over to the form's other sentences.
const TEMPLATES: &[&str] = &[
    "A {form} is a kind of {root}.",
    "The {form} looked like a {root}.",
    "Every {form} needs a {root}.",
    "My {form} is made of {root}.",
    "Her {form} smelled of {root}.",
    "This {form} reminds me of a {root}.",
    "The {form} sat next to the {root}.",
    "No {form} comes without a {root}.",
    "Their {form} was once a {root}.",
    "That {form} turned into a {root}.",
];

/// `per_form` sentences for each (form, root), then `zipf_extra` more whose forms are drawn
/// with Zipf weights 1/rank (a few forms frequent, most rare, as in real text, so training has
/// forms it sees often enough to learn); one per line, in a seeded shuffled order.
pub fn sentences(
    forms: &[(String, String)],
    per_form: usize,
    zipf_extra: usize,
    seed: u64,
) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(forms.len() * per_form + zipf_extra);
    let say = |rng: &mut rand::rngs::StdRng, (form, root): &(String, String)| {
        let t = TEMPLATES.choose(rng).copied().unwrap_or("{form}");
        t.replace("{form}", form).replace("{root}", root)
    };
    for f in forms {
        let picks: Vec<&&str> = TEMPLATES.choose_multiple(&mut rng, per_form).collect();
        for t in picks {
            out.push(t.replace("{form}", &f.0).replace("{root}", &f.1));
        }
    }
    let weights: Vec<f64> = (1..=forms.len()).map(|r| 1.0 / r as f64).collect();
    if let Ok(dist) = rand::distr::weighted::WeightedIndex::new(&weights) {
        use rand::distr::Distribution;
        for _ in 0..zipf_extra {
            let i = dist.sample(&mut rng);
            let s = say(&mut rng, &forms[i]);
            out.push(s);
        }
    }
    use rand::seq::SliceRandom;
    out.shuffle(&mut rng);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_distinct_affixed_and_seeded() {
        let ms = vec![
            Morpheme {
                affix: Affix::Prefix,
                text: "re".into(),
                examples: vec!["redo".into()],
            },
            Morpheme {
                affix: Affix::Suffix,
                text: "ing".into(),
                examples: vec![],
            },
        ];
        let roots: Vec<String> = ["dance", "walk", "sing"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let f = forms(&ms, &roots, 6, 1).unwrap();
        let set: HashSet<&String> = f.iter().map(|(x, _)| x).collect();
        assert_eq!(set.len(), 6);
        assert!(
            f.iter()
                .all(|(x, _)| x.starts_with("re") || x.ends_with("ing"))
        );
        assert_eq!(join("dance", "ing"), "dancing");
        assert!(!f.iter().any(|(x, _)| x == "danceing"));
        assert_eq!(f, forms(&ms, &roots, 6, 1).unwrap());
        assert!(forms(&ms, &roots, 50, 1).is_err()); // only 9 combinations exist
        // A huge count is refused at once, not after a long loop or an allocation failure.
        let e = forms(&ms, &roots, usize::MAX, 1).unwrap_err().to_string();
        assert!(e.contains("at most 9 distinct forms"), "{e}");
        let s = sentences(&f, 2, 30, 3);
        assert_eq!(s.len(), 42);
        // Zipf: the first form is the most frequent.
        let count = |x: &str| s.iter().filter(|l| l.contains(&format!(" {x} "))).count();
        assert!(count(&f[0].0) > count(&f[5].0), "{s:?}");
        assert!(
            f.iter()
                .all(|(x, _)| s.iter().filter(|l| l.contains(x.as_str())).count() >= 2)
        );
    }
}
