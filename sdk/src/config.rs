//! The processor's config from the spec, typed: [`Config::deserialize`]
//! reads the whole map into the processor's own serde type. Values in the
//! spec are text; each is read as the field's type asks (`"100"` as a
//! number for an `i64` field, as text for a `String`), and durations are
//! written like `30s`, `100ms`, `2m`, `1h` (see [`duration`]).

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};

use crate::{Config, Error, Result};

impl Config {
    /// The whole config as `T` (a struct with serde's `Deserialize`). Missing
    /// fields, unknown ones under `#[serde(deny_unknown_fields)]` and values
    /// of the wrong type fail with an error naming them.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        let map = de::value::MapDeserializer::new(self.entries().iter().map(|(k, v)| (k.as_str(), Text(v))));
        T::deserialize(map).map_err(|e: de::value::Error| Error::msg(format!("config: {e}")))
    }
}

/// One config value: text, read as whatever the target type asks for.
#[derive(Clone, Copy)]
struct Text<'a>(&'a str);

impl<'de> IntoDeserializer<'de, de::value::Error> for Text<'de> {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! parsed {
    ($($method:ident => $visit:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
            let v = self.0.trim().parse().map_err(|e| de::Error::custom(format!("`{}`: {e}", self.0)))?;
            visitor.$visit(v)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Text<'de> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }

    parsed!(
        deserialize_bool => visit_bool,
        deserialize_i8 => visit_i8, deserialize_i16 => visit_i16, deserialize_i32 => visit_i32, deserialize_i64 => visit_i64,
        deserialize_u8 => visit_u8, deserialize_u16 => visit_u16, deserialize_u32 => visit_u32, deserialize_u64 => visit_u64,
        deserialize_f32 => visit_f32, deserialize_f64 => visit_f64,
    );

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        visitor.visit_enum(self.0.into_deserializer())
    }

    serde::forward_to_deserialize_any! {
        char str string bytes byte_buf unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier ignored_any i128 u128
    }
}

/// `#[serde(with = "weir_sdk::duration")]` for a `std::time::Duration`
/// field: `30s`, `100ms`, `2m`, `1h`, `1d`, or a number of milliseconds.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// Parses `30s`, `100ms`, `2m`, `1h`, `1d` or plain milliseconds.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let n: u64 = number.parse().map_err(|_| format!("`{text}` is not a duration like 30s or 100ms"))?;
        let ms = match unit.trim() {
            "" | "ms" => 1,
            "s" => 1_000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            other => return Err(format!("`{text}`: unknown unit `{other}` (ms, s, m, h, d)")),
        };
        Ok(Duration::from_millis(n.saturating_mul(ms)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;

    use crate::Config;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Settings {
        threshold: i64,
        name: String,
        enabled: bool,
        #[serde(with = "crate::duration")]
        timeout: Duration,
        ratio: Option<f64>,
        #[serde(default)]
        mode: Mode,
    }

    #[derive(Deserialize, Debug, PartialEq, Default)]
    #[serde(rename_all = "kebab-case")]
    enum Mode {
        #[default]
        Fast,
        Careful,
    }

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn the_config_map_reads_into_a_typed_struct() {
        let c = config(&[
            ("threshold", "100"),
            ("name", "007"),
            ("enabled", "true"),
            ("timeout", "30s"),
            ("mode", "careful"),
        ]);
        let s: Settings = c.deserialize().unwrap();
        assert_eq!(
            s,
            Settings {
                threshold: 100,
                name: "007".into(),
                enabled: true,
                timeout: Duration::from_secs(30),
                ratio: None,
                mode: Mode::Careful
            }
        );
    }

    #[test]
    fn bad_and_missing_values_are_named() {
        let c = config(&[("threshold", "lots"), ("name", "x"), ("enabled", "true"), ("timeout", "1s")]);
        let e = c.deserialize::<Settings>().unwrap_err().to_string();
        assert!(e.contains("config") && e.contains("`lots`"), "{e}");
        let e = config(&[("name", "x")]).deserialize::<Settings>().unwrap_err().to_string();
        assert!(e.contains("missing field `threshold`"), "{e}");
        let c = config(&[("threshold", "1"), ("name", "x"), ("enabled", "no"), ("timeout", "1s")]);
        assert!(c.deserialize::<Settings>().unwrap_err().to_string().contains("`no`"));
        let c = config(&[("threshold", "1"), ("name", "x"), ("enabled", "true"), ("timeout", "1s"), ("typo", "1")]);
        assert!(c.deserialize::<Settings>().unwrap_err().to_string().contains("unknown field `typo`"));
        assert_eq!(crate::duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(crate::duration::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(crate::duration::parse("1500"), Ok(Duration::from_millis(1500)));
        assert!(crate::duration::parse("soon").is_err() && crate::duration::parse("3 weeks").is_err());
    }
}
