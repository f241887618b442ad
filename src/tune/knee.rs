//! The knee of a search's frontier: the plan chosen when no requirement is stated.

use super::search::Trial;

/// The frontier point farthest from the straight line between its ends, in coordinates
/// normalised to the frontier's range.
pub(super) fn knee(trials: &[Trial], frontier: &[usize]) -> usize {
    let pts: Vec<(f64, f64)> = frontier
        .iter()
        .map(|&i| (trials[i].est_texts_per_s, trials[i].score))
        .collect();
    let (Some(first), Some(last)) = (pts.first(), pts.last()) else {
        return 0;
    };
    let span = |a: f64, b: f64| if (b - a).abs() > 1e-12 { b - a } else { 1.0 };
    let (sx, sy) = (span(first.0, last.0), span(last.1, first.1));
    let norm = |p: &(f64, f64)| ((p.0 - first.0) / sx, (p.1 - last.1) / sy);
    // In normalised coordinates the line runs from (0, 1) to (1, 0).
    let best = pts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (x, y) = norm(p);
            (i, x + y - 1.0)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(0, |(i, _)| i);
    frontier[best]
}
