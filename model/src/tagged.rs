//! Decoding an internally tagged enum (`{"op": "put_call", "checkpoint": ...}`) without
//! buffering its body.
//!
//! serde decodes a `#[serde(tag = "...")]` enum by first reading the whole value into an
//! in-memory tree (its private `Content`), so as to find the tag wherever it stands, and then
//! decoding the variant from that tree: every string is allocated twice and every map walked
//! twice. A call checkpoint is 2.5 KB of JSON, a Raft entry carries up to 512 of them, and
//! every node decodes each entry more than once (RPC frames, the log store, forwarded writes):
//! that buffering was the largest single item in the leader's profile (docs/PERFORMANCE.md,
//! "Raft").
//!
//! serde's derived serializer writes the tag first. So `internally_tagged!` declares the enum
//! as before, with its `Serialize` derived as before (the bytes written do not change), plus a
//! private externally tagged twin with the same variants and fields, whose derived
//! `Deserialize` does the real work. The enum's `Deserialize` reads the first key; when it is
//! the tag, it hands the rest of the map straight to the twin's visitor of that variant. When
//! the tag is not first (a document written by hand or by another encoder), the map is read
//! into a `serde_json::Value` and decoded the same way: both paths accept the same documents.
//!
//! Hand-written because serde has no option for it; a twin is what serde's derive can give.
//! Only struct variants are supported (all of `Command`'s are).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, Unexpected,
    VariantAccess, Visitor,
};
use serde::Deserialize;

/// Declares an internally tagged enum of struct variants whose decoding does not buffer
/// (module docs). `twin` names the private externally tagged twin.
macro_rules! internally_tagged {
    (
        tag = $tag:literal, rename_all = $rename:literal, twin = $twin:ident;
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident {
                    $( $(#[$fmeta:meta])* $field:ident : $ty:ty ),* $(,)?
                }
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(serde::Serialize)]
        #[serde(rename_all = $rename, tag = $tag)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant { $( $(#[$fmeta])* $field: $ty ),* } ),*
        }

        /// The externally tagged twin of the enum of the same variants (`crate::tagged`).
        #[derive(serde::Deserialize)]
        #[serde(rename_all = $rename)]
        enum $twin {
            $( $(#[$vmeta])* $variant { $( $(#[$fmeta])* $field: $ty ),* } ),*
        }

        impl From<$twin> for $name {
            fn from(twin: $twin) -> $name {
                match twin {
                    $( $twin::$variant { $($field),* } => $name::$variant { $($field),* } ),*
                }
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<$name, D::Error> {
                $crate::tagged::deserialize::<D, $twin>(d, $tag).map(<$name>::from)
            }
        }
    };
}
pub(crate) use internally_tagged;

/// Decodes `T`, an externally tagged enum, from an internally tagged map whose tag key is
/// `tag`.
pub(crate) fn deserialize<'de, D, T>(d: D, tag: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    d.deserialize_map(Tagged {
        tag,
        twin: PhantomData,
    })
}

struct Tagged<T> {
    tag: &'static str,
    twin: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Tagged<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a map with a `{}` key", self.tag)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let Some(first) = map.next_key::<String>()? else {
            return Err(de::Error::missing_field(self.tag));
        };
        if first == self.tag {
            let variant: String = map.next_value()?;
            return T::deserialize(Rest { variant, map });
        }
        // The tag is further on: read the map whole, then decode from it.
        let mut fields = serde_json::Map::new();
        fields.insert(first, map.next_value()?);
        let mut variant = None;
        while let Some(key) = map.next_key::<String>()? {
            let value: serde_json::Value = map.next_value()?;
            if key == self.tag {
                variant = Some(value);
            } else {
                fields.insert(key, value);
            }
        }
        let variant = match variant {
            Some(serde_json::Value::String(variant)) => variant,
            Some(other) => {
                return Err(de::Error::invalid_type(
                    Unexpected::Other(&other.to_string()),
                    &"a variant name",
                ))
            }
            None => return Err(de::Error::missing_field(self.tag)),
        };
        let external = serde_json::Value::Object(serde_json::Map::from_iter([(
            variant,
            serde_json::Value::Object(fields),
        )]));
        T::deserialize(external).map_err(de::Error::custom)
    }
}

/// The variant's name and the rest of the map: an externally tagged enum to the twin.
struct Rest<A> {
    variant: String,
    map: A,
}

impl<'de, A: MapAccess<'de>> Deserializer<'de> for Rest<A> {
    type Error = A::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, A::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de, A: MapAccess<'de>> EnumAccess<'de> for Rest<A> {
    type Error = A::Error;
    type Variant = Fields<A>;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Fields<A>), A::Error> {
        let variant =
            seed.deserialize(de::value::StringDeserializer::<A::Error>::new(self.variant))?;
        Ok((variant, Fields(self.map)))
    }
}

/// The variant's fields: the rest of the map.
struct Fields<A>(A);

impl<'de, A: MapAccess<'de>> VariantAccess<'de> for Fields<A> {
    type Error = A::Error;

    fn unit_variant(mut self) -> Result<(), A::Error> {
        while self.0.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, A::Error> {
        Err(de::Error::invalid_type(
            Unexpected::NewtypeVariant,
            &"a struct variant",
        ))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, A::Error> {
        Err(de::Error::invalid_type(
            Unexpected::TupleVariant,
            &"a struct variant",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        visitor.visit_map(self.0)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    internally_tagged! {
        tag = "op", rename_all = "snake_case", twin = ExampleTwin;
        #[derive(Clone, Debug, PartialEq)]
        enum Example {
            /// A doc comment on a variant.
            Put {
                key: String,
                #[serde(default)]
                version: Option<u64>,
            },
            Nothing {},
            Many {
                items: Vec<Example>,
            },
        }
    }

    fn decode(json: &str) -> Result<Example, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn writes_the_tag_first_as_serde_does() {
        let put = Example::Put {
            key: "a".into(),
            version: Some(3),
        };
        assert_eq!(
            serde_json::to_string(&put).unwrap(),
            r#"{"op":"put","key":"a","version":3}"#
        );
        assert_eq!(
            serde_json::to_string(&Example::Nothing {}).unwrap(),
            r#"{"op":"nothing"}"#
        );
    }

    #[test]
    fn the_tag_anywhere_decodes_the_same() {
        let put = Example::Put {
            key: "a".into(),
            version: Some(3),
        };
        for json in [
            r#"{"op":"put","key":"a","version":3}"#,
            r#"{"key":"a","op":"put","version":3}"#,
            r#"{"key":"a","version":3,"op":"put"}"#,
        ] {
            assert_eq!(decode(json).unwrap(), put, "{json}");
        }
        let defaulted = Example::Put {
            key: "b".into(),
            version: None,
        };
        assert_eq!(decode(r#"{"op":"put","key":"b"}"#).unwrap(), defaulted);
        assert_eq!(decode(r#"{"key":"b","op":"put"}"#).unwrap(), defaulted);
        assert_eq!(decode(r#"{"op":"nothing"}"#).unwrap(), Example::Nothing {});
    }

    #[test]
    fn nested_values_round_trip() {
        let many = Example::Many {
            items: vec![
                Example::Nothing {},
                Example::Many {
                    items: vec![Example::Put {
                        key: "c\"\\é".into(),
                        version: None,
                    }],
                },
            ],
        };
        let json = serde_json::to_string(&many).unwrap();
        assert_eq!(decode(&json).unwrap(), many);
        let value = serde_json::to_value(&many).unwrap();
        assert_eq!(Example::deserialize(value).unwrap(), many);
    }

    #[test]
    fn bad_documents_are_errors() {
        for (json, says) in [
            (r#"{"op":"drop","key":"a"}"#, "unknown variant `drop`"),
            (r#"{"key":"a","op":"drop"}"#, "unknown variant `drop`"),
            (r#"{"key":"a"}"#, "missing field `op`"),
            (r#"{}"#, "missing field `op`"),
            (r#"{"op":"put"}"#, "missing field `key`"),
            (r#"{"version":1,"op":"put"}"#, "missing field `key`"),
            (r#"{"op":7,"key":"a"}"#, "invalid type"),
            (r#"{"key":"a","op":7}"#, "invalid type"),
            (r#"{"op":"put","key":1}"#, "invalid type"),
            (r#"["put","a"]"#, "invalid type"),
            (r#"{"op":"put","key":"a""#, "EOF"),
        ] {
            let error = decode(json).expect_err(json).to_string();
            assert!(error.contains(says), "{json}: {error}");
        }
    }
}
