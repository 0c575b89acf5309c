//! A forwarding deserializer that reads structs from JSON objects only.
//!
//! serde_json reads a struct from an object *or* an array (`["gpt-4o", [...]]` as a chat request),
//! so every derived struct compiles a second, sequence-shaped deserializer that no provider or
//! client ever exercises. Read through [`ObjectsOnly`], `deserialize_struct` becomes
//! `deserialize_map`: the sequence path is never referenced and the linker drops it, about 90 KiB
//! of the module (measured: 1,090,072 → 1,000,762 bytes). An array where a struct belongs is
//! refused with serde_json's usual "invalid type: sequence, expected struct X". Everything else
//! is forwarded unchanged, and the wrapper is carried into every nested value (map values,
//! sequence elements, `Some`, newtypes, enum variants) so nested structs get the same treatment.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// serde_json's `RawValue` is read through `deserialize_newtype_struct` with this name and a
/// visitor serde_json recognises: it is passed through untouched.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// Wraps a deserializer (for the filter: `&mut serde_json::Deserializer<SliceRead>`).
pub struct ObjectsOnly<D>(pub D);

struct Wrap<X>(X);

macro_rules! forward_deserialize {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.0.$method(Wrap(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectsOnly<D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_string,
        deserialize_bytes,
        deserialize_byte_buf,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier
    );

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        // Nothing nested is built: the plain visitor costs one instance for the whole module.
        self.0.deserialize_ignored_any(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_unit_struct(name, Wrap(visitor))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        if name == RAW_VALUE_TOKEN {
            self.0.deserialize_newtype_struct(name, visitor)
        } else {
            self.0.deserialize_newtype_struct(name, Wrap(visitor))
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple(len, Wrap(visitor))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_tuple_struct(name, len, Wrap(visitor))
    }

    /// The point of the wrapper: a struct is read from an object only.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(Wrap(visitor))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_enum(name, variants, Wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit!(
        visit_bool: bool,
        visit_i8: i8,
        visit_i16: i16,
        visit_i32: i32,
        visit_i64: i64,
        visit_i128: i128,
        visit_u8: u8,
        visit_u16: u16,
        visit_u32: u32,
        visit_u64: u64,
        visit_u128: u128,
        visit_f32: f32,
        visit_f64: f64,
        visit_char: char,
        visit_str: &str,
        visit_borrowed_str: &'de str,
        visit_string: String,
        visit_bytes: &[u8],
        visit_borrowed_bytes: &'de [u8],
        visit_byte_buf: Vec<u8>
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_some(ObjectsOnly(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        self.0.visit_newtype_struct(ObjectsOnly(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        self.0.visit_seq(Wrap(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.0.visit_map(Wrap(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.0.visit_enum(Wrap(data))
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.0.deserialize(ObjectsOnly(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.0.next_element_seed(Wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.0.next_key_seed(Wrap(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.0.next_value_seed(Wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self::Variant), A::Error> {
        let (value, variant) = self.0.variant_seed(Wrap(seed))?;
        Ok((value, Wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.0.newtype_variant_seed(Wrap(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
    }
}

#[cfg(test)]
mod tests {
    use crate::json::{each, from_bytes, from_raw, EachError};
    use serde::Deserialize;
    use serde_json::value::RawValue;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Inner<'a> {
        name: &'a str,
    }

    #[derive(Deserialize, Debug)]
    struct Outer<'a> {
        #[serde(borrow)]
        one: Option<Inner<'a>>,
        #[serde(borrow, default)]
        many: Vec<Inner<'a>>,
        #[serde(borrow)]
        raw: Option<&'a RawValue>,
        #[serde(default)]
        boxed: Option<Box<RawValue>>,
    }

    #[test]
    fn objects_are_read_as_before_and_raw_values_kept_byte_for_byte() {
        let body = br#"{"one":{"name":"a"},"many":[{"name":"b"},{"name":"c"}],"raw":[1, {"x" : 2}],"boxed":{"k":[ ]}}"#;
        let v: Outer = from_bytes(body).unwrap();
        assert_eq!(v.one, Some(Inner { name: "a" }));
        assert_eq!(v.many.len(), 2);
        assert_eq!(v.raw.unwrap().get(), r#"[1, {"x" : 2}]"#);
        assert_eq!(v.boxed.unwrap().get(), r#"{"k":[ ]}"#);
        let v: Outer = from_bytes(br#"{"one":null}"#).unwrap();
        assert!(v.one.is_none() && v.many.is_empty() && v.raw.is_none());
    }

    #[test]
    fn a_struct_is_never_read_from_an_array_at_any_depth() {
        for body in [&br#"[{"name":"a"}]"#[..], br#"{"one":["a"]}"#, br#"{"many":[["b"]]}"#] {
            let e = from_bytes::<Outer>(body).unwrap_err().to_string();
            assert!(e.contains("invalid type: sequence, expected struct"), "{e}");
        }
        let raw: &RawValue = serde_json::from_str(r#"["x"]"#).unwrap();
        assert!(from_raw::<Inner>(raw).is_err());
        let list: &RawValue = serde_json::from_str(r#"[{"name":"a"},["b"]]"#).unwrap();
        let mut seen = Vec::new();
        let r = each(list, |i: Inner| {
            seen.push(i.name);
            Ok::<(), ()>(())
        });
        assert!(matches!(r, Err(EachError::Json(_))));
        assert_eq!(seen, ["a"]);
    }

    #[test]
    fn trailing_bytes_are_refused_as_serde_json_does() {
        assert!(from_bytes::<Inner>(br#"{"name":"a"} x"#).is_err());
        assert!(from_bytes::<Inner>(b"{\"name\":\"a\"} \n").is_ok());
    }
}
