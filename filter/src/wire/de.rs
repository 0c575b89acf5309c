//! Deserializers for "a string, or a list of X" fields without serde's `untagged` buffering: an
//! untagged enum copies the value into serde's generic content tree and compiles every variant's
//! deserializer a second time for it, which costs the .wasm tens of kilobytes per enum.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

struct StrOrSeq<T, R> {
    text: fn(String) -> R,
    list: fn(Vec<T>) -> R,
    expecting: &'static str,
    item: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>, R> Visitor<'de> for StrOrSeq<T, R> {
    type Value = R;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<R, E> {
        Ok((self.text)(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<R, E> {
        Ok((self.text)(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<R, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok((self.list)(items))
    }
}

/// A string becomes `text(s)`, an array `list(items)`; anything else is an error saying `expecting`.
pub fn str_or_seq<'de, D: Deserializer<'de>, T: Deserialize<'de>, R>(
    deserializer: D,
    text: fn(String) -> R,
    list: fn(Vec<T>) -> R,
    expecting: &'static str,
) -> Result<R, D::Error> {
    deserializer.deserialize_any(StrOrSeq { text, list, expecting, item: PhantomData })
}

struct StrOrMap<M, R> {
    text: fn(String) -> R,
    map: fn(M) -> R,
    expecting: &'static str,
    item: PhantomData<M>,
}

impl<'de, M: Deserialize<'de>, R> Visitor<'de> for StrOrMap<M, R> {
    type Value = R;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<R, E> {
        Ok((self.text)(v.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<R, E> {
        Ok((self.text)(v))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<R, A::Error> {
        M::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(self.map)
    }
}

/// A string becomes `text(s)`, an object `map(m)`.
pub fn str_or_map<'de, D: Deserializer<'de>, M: Deserialize<'de>, R>(
    deserializer: D,
    text: fn(String) -> R,
    map: fn(M) -> R,
    expecting: &'static str,
) -> Result<R, D::Error> {
    deserializer.deserialize_any(StrOrMap { text, map, expecting, item: PhantomData })
}

/// Implements `Deserialize` for a two-variant "string or list" enum with `str_or_seq`.
macro_rules! str_or_seq_enum {
    ($ty:ident, $text:ident, $list:ident, $item:ty, $expecting:literal) => {
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::wire::de::str_or_seq::<D, $item, $ty>(d, $ty::$text, $ty::$list, $expecting)
            }
        }
    };
}
pub(crate) use str_or_seq_enum;
