//! `resource.Quantity` in canonical form, as the API server stores it: `0.5` → `500m`,
//! `2000m` → `2`, `1024Mi` → `1Gi`, `1000` → `1k`. Values are kept exactly, in nano-units.

use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    BinarySi,
    DecimalSi,
    DecimalExponent,
}

const NANO: i128 = 1_000_000_000;
const BINARY: [(&str, u32); 6] = [("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5), ("Ei", 6)];
const DECIMAL: [(&str, i32); 10] =
    [("n", -3), ("u", -2), ("m", -1), ("", 0), ("k", 1), ("M", 2), ("G", 3), ("T", 4), ("P", 5), ("E", 6)];

/// The value in nano-units and the format it was written in; `None` when it is no quantity or
/// needs more precision than nano-units (those are kept as written).
pub fn parse(s: &str) -> Option<(i128, Format)> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let (negative, digits) = match number.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || int.len() > 20
    {
        return None;
    }
    let int: i128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let frac_nanos: i128 = if frac.is_empty() { 0 } else { format!("{frac:0<9}").parse().ok()? };
    let base = int * NANO + frac_nanos;
    let (value, format) = if let Some((_, power)) = BINARY.iter().find(|(suf, _)| *suf == suffix) {
        (base.checked_mul(1024i128.pow(*power))?, Format::BinarySi)
    } else if let Some((_, power)) = DECIMAL.iter().find(|(suf, _)| *suf == suffix) {
        (scale10(base, 3 * power)?, Format::DecimalSi)
    } else if let Some(exp) = suffix.strip_prefix(['e', 'E']) {
        (scale10(base, exp.parse().ok()?)?, Format::DecimalExponent)
    } else {
        return None;
    };
    Some((if negative { -value } else { value }, format))
}

fn scale10(value: i128, power: i32) -> Option<i128> {
    if power >= 0 {
        value.checked_mul(10i128.checked_pow(power as u32)?)
    } else {
        let div = 10i128.checked_pow((-power) as u32)?;
        (value % div == 0).then_some(value / div)
    }
}

/// The canonical spelling of a quantity, or `None` to keep it as written.
pub fn canonical(s: &str) -> Option<String> {
    let (nanos, format) = parse(s)?;
    if nanos == 0 {
        return Some("0".into());
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.abs();
    if format == Format::BinarySi && n % NANO == 0 {
        let v = n / NANO;
        if let Some((suffix, power)) = BINARY.iter().rev().find(|(_, p)| v % 1024i128.pow(*p) == 0) {
            return Some(format!("{sign}{}{suffix}", v / 1024i128.pow(*power)));
        }
        return Some(format!("{sign}{v}"));
    }
    if format == Format::DecimalExponent {
        // Exponent spellings are rare in manifests; keep them as written.
        return None;
    }
    let (suffix, power) = DECIMAL.iter().rev().find(|(_, p)| n % 10i128.pow((9 + 3 * p) as u32) == 0)?;
    Some(format!("{sign}{}{suffix}", n / 10i128.pow((9 + 3 * power) as u32)))
}

/// Map fields whose values are quantities: `resources.requests`, node `capacity`, ….
const QUANTITY_MAPS: [&str; 6] = ["requests", "limits", "capacity", "allocatable", "overhead", "hard"];

/// Rewrites every quantity of the object in canonical form.
pub fn canonicalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if QUANTITY_MAPS.contains(&k.as_str())
                    && let Some(quantities) = v.as_object_mut()
                {
                    for q in quantities.values_mut() {
                        canonicalize_one(q);
                    }
                } else if k == "sizeLimit" {
                    canonicalize_one(v);
                } else {
                    canonicalize(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonicalize),
        _ => {}
    }
}

fn canonicalize_one(q: &mut Value) {
    let text = match q {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return,
    };
    if let Some(c) = canonical(&text) {
        *q = Value::String(c);
    } else if q.is_number() {
        *q = Value::String(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_are_spelled_as_kubernetes_stores_them() {
        for (given, want) in [
            ("0.5", "500m"),
            ("1500m", "1500m"),
            ("2000m", "2"),
            ("1", "1"),
            ("1000", "1k"),
            ("128974848", "128974848"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("1.5Ki", "1536"),
            ("100Mi", "100Mi"),
            ("0", "0"),
            ("0.1", "100m"),
            ("250m", "250m"),
            ("1G", "1G"),
            ("-1", "-1"),
        ] {
            assert_eq!(canonical(given).as_deref(), Some(want), "{given}");
        }
        assert_eq!(canonical("lots"), None);
        assert_eq!(canonical("1e3"), None);
        assert!(parse("1.0000000001").is_none());
    }

    #[test]
    fn resources_in_a_pod_are_canonicalized_and_numbers_become_strings() {
        let mut pod = json!({"spec": {"containers": [{"resources": {"requests": {"cpu": 0.5, "memory": "1024Mi"},
            "limits": {"cpu": 1}}}], "volumes": [{"emptyDir": {"sizeLimit": "2048Mi"}}]}});
        canonicalize(&mut pod);
        let r = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(r["requests"], json!({"cpu": "500m", "memory": "1Gi"}));
        assert_eq!(r["limits"], json!({"cpu": "1"}));
        assert_eq!(pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"], "2Gi");
    }
}
