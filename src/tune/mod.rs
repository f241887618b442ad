//! `samp quantize`: the search that picks a plan per encoder layer, the evaluation it scores
//! plans with (and the pure metrics: cosine, Spearman, entity F1), its timing and its reports.

pub mod eval;
mod knee;
pub mod report;
pub mod save;
pub mod search;
mod timing;
