//! Reading the manifest's flattened objects without serde's `flatten` buffer.
//!
//! A process's JSON object holds the keys of its resources' state types side by side
//! (`#[serde(flatten)]`, the image format). serde reads such an object by buffering all of it
//! in a generic form, then cloning that for each flattened part; the manifest is flattened
//! into the container's envelope, and the processes into the manifest, so a process was
//! buffered three times. For a process of 10,000 mappings that made reading
//! the manifest 6x the cost of parsing the mappings (39 ms against 7, natively; several
//! times that in the guest, where it was a fifth of the restore).
//!
//! Here the object's values are kept as raw JSON text ([`RawObject`]), and each part parses
//! only its own keys, once: a derived `Deserialize` names them ([`fields_of`]). The objects
//! are written as before (the derived `Serialize`, with flatten).

use serde::de::{self, value::MapDeserializer, DeserializeOwned, Deserializer, MapAccess, Visitor};
use serde::forward_to_deserialize_any;
use serde_json::value::RawValue;
use std::fmt;

/// A JSON object, its values unparsed.
pub struct RawObject(Vec<(String, Box<RawValue>)>);

impl<'de> de::Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = RawObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    entries.push(entry);
                }
                Ok(RawObject(entries))
            }
        }
        d.deserialize_map(Entries)
    }
}

impl RawObject {
    /// Part `T` (a struct whose derived `Deserialize` has no flatten of its own), read from
    /// the keys it has; the others are left to the other parts.
    pub fn part<T: DeserializeOwned, E: de::Error>(&self) -> Result<T, E> {
        let fields = fields_of::<T>();
        let entries = (self.0.iter())
            .filter(|(k, _)| fields.contains(&k.as_str()))
            .map(|(k, v)| (k.as_str(), &**v));
        T::deserialize(MapDeserializer::<_, serde_json::Error>::new(entries)).map_err(E::custom)
    }
}

impl RawObject {
    /// `T` from every key (a type that reads the object itself, ignoring the keys it does
    /// not know, as `crate::manifest::Manifest` does).
    pub fn whole<T: DeserializeOwned, E: de::Error>(&self) -> Result<T, E> {
        let entries = self.0.iter().map(|(k, v)| (k.as_str(), &**v));
        T::deserialize(MapDeserializer::<_, serde_json::Error>::new(entries)).map_err(E::custom)
    }
}

/// A type read from the raw entries of a flattened object (the envelope's, for the
/// manifest): by default through its own `Deserialize` over them ([`RawObject::whole`]). A
/// type that splits the object into parts itself reads the entries as they are: going
/// through its `Deserialize`, it would capture every value raw a second time (for a
/// 10,000-mapping process, a scan of its 1.5 MB of mappings, a fifth of reading it).
pub trait FromRawObject: DeserializeOwned {
    fn from_raw<E: de::Error>(raw: &RawObject) -> Result<Self, E> {
        raw.whole()
    }
}

/// The keys a derived `Deserialize` of a struct reads: serde hands them to
/// `deserialize_struct`, which this deserializer records and then fails. Empty for anything
/// else (a struct with a flattened field asks for a map instead).
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldsProbe(&mut fields));
    fields
}

struct FieldsProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for FieldsProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(de::Error::custom("only its fields were wanted"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct A {
        x: u32,
        #[serde(default, rename = "why")]
        y: Vec<u8>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct B {
        z: String,
    }

    #[test]
    fn a_struct_names_its_keys() {
        assert_eq!(fields_of::<A>(), ["x", "why"]);
        assert_eq!(fields_of::<B>(), ["z"]);
        assert!(fields_of::<Vec<u8>>().is_empty());
    }

    #[test]
    fn each_part_reads_its_own_keys() {
        let o: RawObject =
            serde_json::from_str(r#"{"z": "zed", "x": 7, "why": [1, 2], "other": {"a": 1}}"#)
                .unwrap();
        let a: A = o.part::<_, serde_json::Error>().unwrap();
        assert_eq!(
            a,
            A {
                x: 7,
                y: vec![1, 2]
            }
        );
        let b: B = o.part::<_, serde_json::Error>().unwrap();
        assert_eq!(b.z, "zed");
        // A missing key or a wrong type is the part's error.
        let o: RawObject = serde_json::from_str(r#"{"x": "seven"}"#).unwrap();
        let e = o.part::<A, serde_json::Error>().unwrap_err().to_string();
        assert!(e.contains("invalid type"), "{e}");
        let e = o.part::<B, serde_json::Error>().unwrap_err().to_string();
        assert!(e.contains("missing field `z`"), "{e}");
        assert!(serde_json::from_str::<RawObject>("[1]").is_err());
    }
}
