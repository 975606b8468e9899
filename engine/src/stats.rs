//! Two-sample statistics for the geometry report: Welch's t-test, the Mann-Whitney U test,
//! Cohen's d, the two-sample Kolmogorov-Smirnov test, and summaries. Distribution functions
//! come from `statrs`; the tests themselves are a few lines each (statrs has no hypothesis
//! tests), checked against scipy in the unit tests below.

pub use neoscope_api::inject::{Summary, TestResult};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Mean and sample variance (n − 1).
pub fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// Welch's unequal-variance t-test, two-sided (scipy `ttest_ind(equal_var=False)`).
pub fn welch_t(a: &[f64], b: &[f64]) -> TestResult {
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (sa, sb) = (va / na, vb / nb);
    let t = (ma - mb) / (sa + sb).sqrt();
    let df = (sa + sb).powi(2) / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    let p = StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |d| 2.0 * d.sf(t.abs()));
    TestResult {
        statistic: t,
        p_value: p.min(1.0),
        df: Some(df),
    }
}

/// Cohen's d with the pooled standard deviation: `(mean a − mean b) / s_pooled`.
pub fn cohen_d(a: &[f64], b: &[f64]) -> f64 {
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let sp = (((na - 1.0) * va + (nb - 1.0) * vb) / (na + nb - 2.0)).sqrt();
    (ma - mb) / sp
}

/// Mann-Whitney U test, two-sided, normal approximation with tie correction and continuity
/// correction (scipy `mannwhitneyu(method="asymptotic")`). The statistic is U of `a`.
pub fn mann_whitney(a: &[f64], b: &[f64]) -> TestResult {
    let mut all: Vec<(f64, bool)> = a
        .iter()
        .map(|v| (*v, true))
        .chain(b.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Mid-ranks; tie groups feed the variance correction Σ(t³ − t).
    let mut rank_a = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let (mid, t) = ((i + j) as f64 / 2.0 + 1.0, (j - i + 1) as f64);
        tie_term += t * t * t - t;
        rank_a += mid * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let n = na + nb;
    let u1 = rank_a - na * (na + 1.0) / 2.0;
    let u = u1.max(na * nb - u1);
    let mu = na * nb / 2.0;
    let sigma = (na * nb / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)))).sqrt();
    let z = (u - mu - 0.5) / sigma;
    let p = Normal::new(0.0, 1.0).map_or(f64::NAN, |d| 2.0 * d.sf(z));
    TestResult {
        statistic: u1,
        p_value: p.clamp(0.0, 1.0),
        df: None,
    }
}

/// The Kolmogorov distribution's survival function Q(λ) = 2 Σ (−1)^(k−1) exp(−2k²λ²), with
/// the dual series for small λ where the first converges slowly (scipy.special.kolmogorov).
pub fn kolmogorov_sf(lambda: f64) -> f64 {
    if lambda <= 0.0 {
        return 1.0;
    }
    if lambda < 1.0 {
        // 1 − √(2π)/λ Σ exp(−(2k−1)²π²/(8λ²))
        let s: f64 = (1..=50)
            .map(|k| {
                let o = f64::from(2 * k - 1);
                (-(o * o) * std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda)).exp()
            })
            .sum();
        return (1.0 - (std::f64::consts::TAU).sqrt() / lambda * s).clamp(0.0, 1.0);
    }
    let s: f64 = (1..=100)
        .map(|k| {
            let kf = f64::from(k);
            let sign = if k % 2 == 1 { 1.0 } else { -1.0 };
            sign * (-2.0 * kf * kf * lambda * lambda).exp()
        })
        .sum();
    (2.0 * s).clamp(0.0, 1.0)
}

/// Two-sample Kolmogorov-Smirnov test: D = sup |F_a − F_b|, p-value from the asymptotic
/// Kolmogorov distribution at √(n_a n_b/(n_a+n_b))·D.
pub fn ks_2samp(a: &[f64], b: &[f64]) -> TestResult {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (na, nb) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let v = a[i].min(b[j]);
        while i < a.len() && a[i] <= v {
            i += 1;
        }
        while j < b.len() && b[j] <= v {
            j += 1;
        }
        let gap = (i as f64 / na - j as f64 / nb).abs();
        d = d.max(gap);
    }
    let en = na * nb / (na + nb);
    TestResult {
        statistic: d,
        p_value: kolmogorov_sf(en.sqrt() * d),
        df: None,
    }
}

/// Summary of a non-empty sample (NaNs if empty).
pub fn summary(x: &[f64]) -> Summary {
    let mut s = x.to_vec();
    s.sort_by(f64::total_cmp);
    let (mean, var) = if s.len() > 1 {
        mean_var(&s)
    } else {
        (s.first().copied().unwrap_or(f64::NAN), 0.0)
    };
    Summary {
        n: s.len(),
        mean,
        std: var.sqrt(),
        min: s.first().copied().unwrap_or(f64::NAN),
        median: s.get(s.len() / 2).copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
    }
}

/// Histogram counts of `x` over `bins` equal bins spanning [lo, hi] (values outside clamp).
pub fn histogram(x: &[f64], lo: f64, hi: f64, bins: usize) -> Vec<usize> {
    let mut h = vec![0usize; bins.max(1)];
    let w = (hi - lo) / h.len() as f64;
    for v in x {
        let i = (((v - lo) / w).floor().max(0.0) as usize).min(h.len() - 1);
        h[i] += 1;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reference values from scipy 1.17.1:
    //   a=[1.2,2.4,3.1,0.7,5.5,2.2,3.3,4.1]; b=[2.9,3.8,4.4,5.1,3.3,6.0,4.9]
    //   stats.ttest_ind(a,b,equal_var=False) -> t=-2.234310301220857, p=0.04444773739541725,
    //     df=12.48405998554116
    //   stats.mannwhitneyu(a,b,alternative='two-sided',method='asymptotic') -> U=11.5,
    //     p=0.0638399918688504
    //   pooled-sd Cohen's d computed with numpy -> -1.1285270849127698
    //   D=stats.ks_2samp(a,b).statistic=0.5;
    //     special.kolmogorov(sqrt(8*7/15)*0.5) -> 0.3081329677736096
    const A: [f64; 8] = [1.2, 2.4, 3.1, 0.7, 5.5, 2.2, 3.3, 4.1];
    const B: [f64; 7] = [2.9, 3.8, 4.4, 5.1, 3.3, 6.0, 4.9];

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn welch_matches_scipy() {
        let r = welch_t(&A, &B);
        close(r.statistic, -2.234_310_301_220_857, 1e-12);
        close(r.p_value, 0.044_447_737_395_417_25, 1e-9);
        close(r.df.unwrap_or(0.0), 12.484_059_985_541_16, 1e-9);
    }

    #[test]
    fn cohen_matches_numpy() {
        close(cohen_d(&A, &B), -1.128_527_084_912_769_8, 1e-12);
    }

    #[test]
    fn mann_whitney_matches_scipy() {
        let r = mann_whitney(&A, &B);
        close(r.statistic, 11.5, 0.0);
        close(r.p_value, 0.063_839_991_868_850_4, 1e-9);
        // With ties: c=[1,2,2,3,3,3,4], d=[2,3,4,4,5,5] -> U=8.5, p=0.07826242947714618.
        let c = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0];
        let d = [2.0, 3.0, 4.0, 4.0, 5.0, 5.0];
        let r = mann_whitney(&c, &d);
        close(r.statistic, 8.5, 0.0);
        close(r.p_value, 0.078_262_429_477_146_18, 1e-9);
    }

    #[test]
    fn ks_matches_scipy() {
        let r = ks_2samp(&A, &B);
        close(r.statistic, 0.5, 1e-15);
        close(r.p_value, 0.308_132_967_773_609_6, 1e-9);
        // x_i=((37 i) mod 101)/101 (60), y_j=(((53 j) mod 97)/97)^1.5 (45):
        //   ks_2samp -> D=0.20555555555555555; kolmogorov(sqrt(60*45/105)*D) -> 0.22733176094922927
        //   ttest_ind(equal_var=False) -> t=2.1204817730226444, p=0.03660051001259481
        //   mannwhitneyu(asymptotic) -> U=1682.5, p=0.031572229420781334
        let x: Vec<f64> = (0..60).map(|i| f64::from((i * 37) % 101) / 101.0).collect();
        let y: Vec<f64> = (0..45)
            .map(|j| (f64::from((j * 53) % 97) / 97.0).powf(1.5))
            .collect();
        let r = ks_2samp(&x, &y);
        close(r.statistic, 0.205_555_555_555_555_55, 1e-12);
        close(r.p_value, 0.227_331_760_949_229_27, 1e-9);
        close(welch_t(&x, &y).p_value, 0.036_600_510_012_594_81, 1e-9);
        let u = mann_whitney(&x, &y);
        close(u.statistic, 1682.5, 0.0);
        close(u.p_value, 0.031_572_229_420_781_334, 1e-9);
    }

    #[test]
    fn kolmogorov_series_agree_where_they_meet() {
        // Both series are valid at λ = 1; the switch must not jump.
        let below = kolmogorov_sf(1.0 - 1e-9);
        let above = kolmogorov_sf(1.0);
        close(below, above, 1e-8);
        close(kolmogorov_sf(0.0), 1.0, 0.0);
        assert!(kolmogorov_sf(3.0) < 1e-6);
    }

    #[test]
    fn histogram_counts_every_value() {
        let h = histogram(&[0.0, 0.1, 0.5, 0.99, 1.0, 2.0, -1.0], 0.0, 1.0, 4);
        assert_eq!(h, vec![3, 0, 1, 3]);
    }
}
