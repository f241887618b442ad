//! Request fields into domain values, before any work is spent: counts, text sizes, enum
//! values, and the token estimate admission reserves with. Pure functions (the fuzz target
//! `request` drives them).

use super::proto;
use super::status::ServeError;
use crate::config::Limits;
use crate::model::heads::tag::Aggregation;
use crate::tokenize::{Input, Truncation};

/// The number of inputs of a request (a pair counts once) against the limit.
pub fn check_count(limits: &Limits, field: &str, n: usize) -> Result<(), ServeError> {
    if n == 0 {
        return Err(ServeError::invalid(field, "empty batch"));
    }
    if n > limits.max_inputs {
        return Err(ServeError::invalid(
            field,
            format!("{n} inputs, more than the limit of {}", limits.max_inputs),
        ));
    }
    Ok(())
}

/// One text, checked where it lies (no copy); `field` is only formatted on error.
pub fn check_text(
    limits: &Limits,
    field: impl FnOnce() -> String,
    t: &str,
) -> Result<(), ServeError> {
    let limit = limits.max_text_chars;
    if t.is_empty() {
        return Err(ServeError::invalid(field(), "empty text"));
    }
    // Bytes bound characters from above: count only when the bytes could be over.
    if t.len() > limit && t.chars().count() > limit {
        return Err(ServeError::invalid(
            field(),
            format!("longer than {limit} characters"),
        ));
    }
    Ok(())
}

/// Tokens a request will have, guessed from its bytes before tokenizing (about four bytes a
/// token in English text, at most the model's limit per input).
pub fn estimate_tokens(inputs: &[Input], max_len: usize) -> usize {
    inputs
        .iter()
        .map(|i| match i {
            Input::Single(a) => a.len() / 4 + 2,
            Input::Pair(a, b) => (a.len() + b.len()) / 4 + 3,
        })
        .map(|t| t.min(max_len))
        .sum()
}

pub fn truncation(v: i32) -> Result<Truncation, ServeError> {
    match proto::Truncation::try_from(v) {
        Ok(proto::Truncation::Unspecified | proto::Truncation::Truncate) => {
            Ok(Truncation::Truncate)
        }
        Ok(proto::Truncation::Error) => Ok(Truncation::Error),
        Err(_) => Err(ServeError::invalid(
            "truncation",
            format!("unknown value {v}"),
        )),
    }
}

pub fn aggregation(v: i32) -> Result<Aggregation, ServeError> {
    use proto::Aggregation as A;
    match A::try_from(v) {
        Ok(A::Unspecified | A::Simple) => Ok(Aggregation::Simple),
        Ok(A::None) => Ok(Aggregation::None),
        Ok(A::First) => Ok(Aggregation::First),
        Ok(A::Average) => Ok(Aggregation::Average),
        Ok(A::Max) => Ok(Aggregation::Max),
        Err(_) => Err(ServeError::invalid(
            "aggregation",
            format!("unknown value {v}"),
        )),
    }
}
