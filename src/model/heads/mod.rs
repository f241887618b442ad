//! Task heads on top of the encoder's token states: embed (pooling), classify (sequence
//! classification) and tag (token classification → entities). A head never touches the
//! encoder's internals; it reads `[T, H]` states.

pub mod classify;
pub mod embed;
pub mod tag;
