//! The configuration as written: serde structs that keep the span of every value, so the
//! conversion into [`super::Config`] can point at the value at fault.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use toml::Spanned;

pub(crate) type S<T> = Spanned<T>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_message_size: Option<S<Scalar>>,
    pub max_recipients: Option<S<i64>>,
    pub max_connections: Option<S<i64>>,
    pub max_line_length: Option<S<Scalar>>,
    pub idle_timeout: Option<S<Scalar>>,
    pub data_timeout: Option<S<Scalar>>,
    pub bare_newlines: Option<S<String>>,
    pub shutdown_grace: Option<S<Scalar>>,
    pub max_hops: Option<S<i64>>,
    pub max_errors: Option<S<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListen {
    pub address: S<String>,
    pub tls_cert: Option<S<String>>,
    pub tls_key: Option<S<String>>,
}

/// One `[actions.NAME]` table: the keys of both kinds, sorted out on conversion so that a key
/// of the other kind gets a precise message rather than "unknown field".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAction {
    // Local delivery.
    pub mbox: Option<S<String>>,
    pub maildir: Option<S<String>>,
    pub alias: Option<S<String>>,
    pub allow_commands: Option<S<bool>>,
    pub allow_files: Option<S<bool>>,
    // Relaying.
    pub relay: Option<S<OneOrMany<String, S<String>>>>,
    pub auth: Option<S<String>>,
    pub mail_from: Option<S<String>>,
    pub ca_file: Option<S<String>>,
    pub insecure: Option<S<bool>>,
    pub alignment: Option<S<String>>,
    pub on_misalignment: Option<S<String>>,
    pub connect_timeout: Option<S<Scalar>>,
    pub command_timeout: Option<S<Scalar>>,
    pub data_timeout: Option<S<Scalar>>,
    pub max_connections: Option<S<i64>>,
    pub max_connections_total: Option<S<i64>>,
    pub dkim: Option<S<OneOrMany<RawDkim, S<RawDkim>>>>,
    pub sign_unaligned: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDkim {
    pub domain: S<String>,
    pub selector: S<String>,
    pub key: S<String>,
    pub sign_headers: Option<S<Vec<S<String>>>>,
    pub oversign_headers: Option<S<Vec<S<String>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub retry_min: Option<S<Scalar>>,
    pub retry_max: Option<S<Scalar>>,
    pub lifetime: Option<S<Scalar>>,
    pub warn_after: Option<S<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub address: S<String>,
    pub allow_non_loopback: Option<S<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    pub interval: Option<S<Scalar>>,
    pub nameservers: Option<Vec<S<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub level: Option<S<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub from: S<RawFrom>,
    #[serde(rename = "for")]
    pub recipients: Option<S<OneOrMany<String, S<String>>>>,
    pub mail_from: Option<S<RawAddresses>>,
    pub rcpt_to: Option<S<RawAddresses>>,
    pub action: S<String>,
}

/// `from = "local"` (a name) or `from = { source = ["127.0.0.0/8", "::1"] }`.
pub(crate) enum RawFrom {
    Name(String),
    Source(S<OneOrMany<String, S<String>>>),
}

impl<'de> Deserialize<'de> for RawFrom {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawFrom;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"local\", \"any\", \"socket\" or { source = [networks] }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawFrom, E> {
                Ok(RawFrom::Name(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawFrom, A::Error> {
                let mut source = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "source" if source.is_none() => source = Some(map.next_value()?),
                        "source" => return Err(de::Error::duplicate_field("source")),
                        other => return Err(de::Error::unknown_field(other, &["source"])),
                    }
                }
                source
                    .map(RawFrom::Source)
                    .ok_or_else(|| de::Error::missing_field("source"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A `mail_from` or `rcpt_to` value: `"user@domain"` or `"@domain"`, a list of them,
/// `{ table = "NAME" }`, or any of these inside `{ not = … }`.
pub(crate) enum RawAddresses {
    One(String),
    Many(Vec<S<String>>),
    Table(S<String>),
    Not(Box<S<RawAddresses>>),
}

impl<'de> Deserialize<'de> for RawAddresses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawAddresses;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"user@domain\", \"@domain\", a list of them, { table = \"NAME\" } or { not = ... }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawAddresses, E> {
                Ok(RawAddresses::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawAddresses, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawAddresses::Many(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawAddresses, A::Error> {
                let mut out = None;
                while let Some(key) = map.next_key::<String>()? {
                    if out.is_some() {
                        return Err(de::Error::custom(
                            "give one of `table` or `not`, alone in its braces",
                        ));
                    }
                    out = Some(match key.as_str() {
                        "table" => RawAddresses::Table(map.next_value()?),
                        "not" => RawAddresses::Not(Box::new(map.next_value()?)),
                        other => return Err(de::Error::unknown_field(other, &["table", "not"])),
                    });
                }
                out.ok_or_else(|| de::Error::custom("empty braces: give `table` or `not`"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A string or an integer: sizes may be either, durations are strings but a bare `0` is
/// accepted as "zero" too.
pub(crate) enum Scalar {
    Str(String),
    Int(i64),
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                i64::try_from(v)
                    .map(Scalar::Int)
                    .map_err(|_| E::custom("integer too large"))
            }
        }
        d.deserialize_any(V)
    }
}

/// One value or an array of them (`relay = "url"` or `relay = ["url", …]`). The single form
/// `U` carries no span of its own (the enclosing `Spanned` has it); array items `T` do.
pub(crate) enum OneOrMany<U, T> {
    One(U),
    Many(Vec<T>),
}

impl<'de, U: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<U, T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<U, T>(PhantomData<(U, T)>);
        impl<'de, U: Deserialize<'de>, T: Deserialize<'de>> Visitor<'de> for V<U, T> {
            type Value = OneOrMany<U, T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or an array of values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                U::deserialize(de::value::StrDeserializer::<E>::new(v)).map(OneOrMany::One)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                U::deserialize(de::value::MapAccessDeserializer::new(map)).map(OneOrMany::One)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany::Many(items))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}
