//! The samp.v1 codec: prost, plus a bound on what a request may cost *before* it is decoded.
//!
//! prost turns every repeated string into its own allocation and `Vec` slot, so a 12 MB request
//! of millions of one-byte texts decodes into hundreds of megabytes before any handler could count
//! its inputs. The decoder here first walks the raw wire bytes of the request (no allocation),
//! counts the entries of field 1 (`texts` / `inputs` in every request that carries text) and
//! measures each, and refuses with INVALID_ARGUMENT when the count or a size is over the limit.
//! Only then does prost decode. A request that does not parse (invalid UTF-8 in a string
//! included) is the client's fault too: INVALID_ARGUMENT, not INTERNAL.
//!
//! The limits are process-wide (the generated code builds the codec with `Default`): `serve`
//! raises them to its configuration. The handlers still check the configured limits exactly;
//! this is the ceiling that keeps decoding bounded.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::proto;
use crate::config::Limits;

static MAX_INPUTS: AtomicUsize = AtomicUsize::new(0);
static MAX_TEXT_CHARS: AtomicUsize = AtomicUsize::new(0);

/// Raise the process-wide decode ceiling to `limits` (never lowers it: servers sharing a
/// process each keep their own exact checks in the handlers).
pub fn raise_limits(limits: &Limits) {
    MAX_INPUTS.fetch_max(limits.max_inputs, Ordering::Relaxed);
    MAX_TEXT_CHARS.fetch_max(limits.max_text_chars, Ordering::Relaxed);
}

fn ceiling() -> (usize, usize) {
    let d = Limits::default();
    let get = |a: &AtomicUsize, default: usize| match a.load(Ordering::Relaxed) {
        0 => default,
        v => v,
    };
    (
        get(&MAX_INPUTS, d.max_inputs),
        get(&MAX_TEXT_CHARS, d.max_text_chars),
    )
}

/// What a message type checks on its raw bytes before it is decoded.
pub trait Precheck {
    /// The name of field 1 when it is the request's list of texts (each an entry of at most
    /// `bytes_per_char × max_text_chars` bytes, plus `overhead`), else `None`.
    const INPUTS: Option<(&'static str, usize, usize)> = None;
    /// Whether a decode failure is the peer's fault (a request) rather than ours (a reply).
    const REQUEST: bool = false;
}

macro_rules! precheck {
    ($($t:ty),* $(,)?) => { $(impl Precheck for $t {})* };
}
precheck!(
    proto::EmbedResponse,
    proto::ClassifyResponse,
    proto::TagResponse,
    proto::ListModelsResponse,
    proto::ModelInfo,
);
impl Precheck for proto::ListModelsRequest {
    const REQUEST: bool = true;
}
impl Precheck for proto::GetModelRequest {
    const REQUEST: bool = true;
}
// A UTF-8 character is at most 4 bytes.
impl Precheck for proto::EmbedRequest {
    const INPUTS: Option<(&'static str, usize, usize)> = Some(("texts", 4, 0));
    const REQUEST: bool = true;
}
impl Precheck for proto::TagRequest {
    const INPUTS: Option<(&'static str, usize, usize)> = Some(("texts", 4, 0));
    const REQUEST: bool = true;
}
// A ClassifyInput holds one text or a pair (two texts with their tags and lengths).
impl Precheck for proto::ClassifyRequest {
    const INPUTS: Option<(&'static str, usize, usize)> = Some(("inputs", 8, 32));
    const REQUEST: bool = true;
}

/// Why a request was refused before decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    TooMany { field: &'static str, limit: usize },
    TooLong { field: String, limit: usize },
}

impl Refusal {
    fn status(&self) -> Status {
        match self {
            Refusal::TooMany { field, limit } => Status::invalid_argument(format!(
                "invalid {field}: more than the limit of {limit} inputs"
            )),
            Refusal::TooLong { field, limit } => {
                Status::invalid_argument(format!("invalid {field}: longer than {limit} characters"))
            }
        }
    }
}

/// Walk the top-level fields of an encoded message and bound the entries of field 1. Malformed
/// bytes end the walk quietly: prost's decode reports them.
pub fn scan(
    bytes: &[u8],
    field: &'static str,
    max_inputs: usize,
    max_entry_bytes: usize,
    max_chars: usize,
) -> Result<(), Refusal> {
    let mut p = 0;
    let mut count = 0usize;
    while p < bytes.len() {
        let Some((key, n)) = varint(&bytes[p..]) else {
            return Ok(());
        };
        p += n;
        let len = match key & 7 {
            0 => match varint(&bytes[p..]) {
                Some((_, n)) => n,
                None => return Ok(()),
            },
            1 => 8,
            5 => 4,
            2 => {
                let Some((len, n)) = varint(&bytes[p..]) else {
                    return Ok(());
                };
                p += n;
                let Ok(len) = usize::try_from(len) else {
                    return Ok(());
                };
                if key >> 3 == 1 {
                    if count >= max_inputs {
                        return Err(Refusal::TooMany {
                            field,
                            limit: max_inputs,
                        });
                    }
                    if len > max_entry_bytes {
                        return Err(Refusal::TooLong {
                            field: format!("{field}[{count}]"),
                            limit: max_chars,
                        });
                    }
                    count += 1;
                }
                len
            }
            _ => return Ok(()),
        };
        p = match p.checked_add(len) {
            Some(q) if q <= bytes.len() => q,
            _ => return Ok(()),
        };
    }
    Ok(())
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(10) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// prost with the pre-decode bound; named by `codec_path` in build.rs.
#[derive(Debug, Clone)]
pub struct SampCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SampCodec<T, U> {
    fn default() -> Self {
        SampCodec(PhantomData)
    }
}

impl<T, U> Codec for SampCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Precheck + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SampEncoder<T>;
    type Decoder = SampDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SampEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        SampDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct SampEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SampEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // EncodeBuf grows on demand, so encoding cannot run out of space.
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding the reply: {e}")))
    }
}

#[derive(Debug)]
pub struct SampDecoder<U>(PhantomData<U>);

impl<U: Message + Default + Precheck> Decoder for SampDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        checked_decode(buf).map(Some)
    }
}

/// Bound the request on its raw bytes, then decode it.
pub fn checked_decode<U: Message + Default + Precheck>(
    buf: &mut impl bytes::Buf,
) -> Result<U, Status> {
    if let Some((field, per_char, overhead)) = U::INPUTS {
        // tonic hands over one message in one contiguous buffer; were it ever split, the
        // handlers' exact checks still apply after decoding.
        if buf.chunk().len() == buf.remaining() {
            let (max_inputs, max_chars) = ceiling();
            let max_entry = max_chars.saturating_mul(per_char).saturating_add(overhead);
            scan(buf.chunk(), field, max_inputs, max_entry, max_chars).map_err(|r| r.status())?;
        }
    }
    U::decode(buf).map_err(|e| {
        if U::REQUEST {
            Status::invalid_argument(format!("malformed request message: {e}"))
        } else {
            Status::internal(format!("malformed reply message: {e}"))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embed(texts: &[&str]) -> Vec<u8> {
        proto::EmbedRequest {
            texts: texts.iter().map(|t| t.to_string()).collect(),
            model: "m".into(),
            dimensions: 7,
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn counts_and_measures_field_one_only() {
        let b = embed(&["a", "bb", "ccc"]);
        assert_eq!(scan(&b, "texts", 3, 3, 3), Ok(()));
        assert_eq!(
            scan(&b, "texts", 2, 3, 3),
            Err(Refusal::TooMany {
                field: "texts",
                limit: 2
            })
        );
        assert_eq!(
            scan(&b, "texts", 3, 2, 2),
            Err(Refusal::TooLong {
                field: "texts[2]".into(),
                limit: 2
            })
        );
    }

    #[test]
    fn classify_inputs_are_counted_once_per_pair() {
        let pair = proto::ClassifyInput {
            input: Some(proto::classify_input::Input::Pair(proto::TextPair {
                a: "one".into(),
                b: "two".into(),
            })),
        };
        let b = proto::ClassifyRequest {
            inputs: vec![pair.clone(), pair],
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(scan(&b, "inputs", 2, 100, 100), Ok(()));
        assert!(scan(&b, "inputs", 1, 100, 100).is_err());
    }

    #[test]
    fn malformed_bytes_are_left_to_prost() {
        // Truncated varints, a length past the end, a group wire type: the walk stops quietly.
        for bad in [&[0xff_u8; 12][..], &[0x0a, 0x7f, 0x61], &[0x0b], &[0x0a]] {
            assert_eq!(scan(bad, "texts", 1000, 1000, 1000), Ok(()), "{bad:?}");
            assert!(checked_decode::<proto::EmbedRequest>(&mut &bad[..]).is_err());
        }
        // Invalid UTF-8 in a string is the client's fault.
        let st =
            checked_decode::<proto::EmbedRequest>(&mut &[0x0a, 0x02, 0xc3, 0x28][..]).unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument, "{st:?}");
        // A reply that does not parse is ours.
        let st = checked_decode::<proto::EmbedResponse>(&mut &[0x0b][..]).unwrap_err();
        assert_eq!(st.code(), tonic::Code::Internal, "{st:?}");
    }

    #[test]
    fn the_decoder_refuses_before_decoding() {
        let d = Limits::default();
        let texts = vec!["a"; d.max_inputs + 1];
        let st = checked_decode::<proto::EmbedRequest>(&mut &embed(&texts)[..]).unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().contains("texts"), "{st:?}");
        let long = "é".repeat(d.max_text_chars * 2 + 1);
        let st = checked_decode::<proto::TagRequest>(
            &mut &proto::TagRequest {
                texts: vec![long],
                ..Default::default()
            }
            .encode_to_vec()[..],
        )
        .unwrap_err();
        assert!(st.message().contains("texts[0]"), "{st:?}");
        let ok = checked_decode::<proto::EmbedRequest>(&mut &embed(&["fine"])[..]).unwrap();
        assert_eq!(ok.texts, ["fine"]);
    }
}
