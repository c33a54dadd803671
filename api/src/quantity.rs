//! Kubernetes resource quantities (`128Mi`, `1G`, `500m`, `1.5`, `2e3`), parsed exactly: the
//! value is kept as `digits × 10^exp10 × 2^exp2`, so `0.1` CPU is 100 millicores, never 101.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {0:?}")]
pub struct QuantityError(pub String);

/// A parsed quantity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedQuantity {
    digits: i128,
    exp10: i32,
    exp2: u32,
}

impl ParsedQuantity {
    pub fn parse(s: &str) -> Result<Self, QuantityError> {
        let err = || QuantityError(s.to_string());
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        let mut digits: i128 = 0;
        for c in int_part.chars().chain(frac_part.chars()) {
            digits = digits.checked_mul(10).and_then(|d| d.checked_add(i128::from(c as u8 - b'0'))).ok_or_else(err)?;
        }
        let mut exp10 = -(frac_part.len() as i32);
        let mut exp2 = 0;
        match suffix {
            "" => {}
            "Ki" => exp2 = 10,
            "Mi" => exp2 = 20,
            "Gi" => exp2 = 30,
            "Ti" => exp2 = 40,
            "Pi" => exp2 = 50,
            "Ei" => exp2 = 60,
            "n" => exp10 -= 9,
            "u" => exp10 -= 6,
            "m" => exp10 -= 3,
            "k" => exp10 += 3,
            "M" => exp10 += 6,
            "G" => exp10 += 9,
            "T" => exp10 += 12,
            "P" => exp10 += 15,
            "E" => exp10 += 18,
            _ if suffix.starts_with(['e', 'E']) => {
                let e: i32 = suffix[1..].parse().map_err(|_| err())?;
                if !(-30..=30).contains(&e) {
                    return Err(err());
                }
                exp10 += e;
            }
            _ => return Err(err()),
        }
        Ok(Self { digits: if negative { -digits } else { digits }, exp10, exp2 })
    }

    /// `ceil(value × 10^scale)`, as Kubernetes rounds (`Value()`, `MilliValue()`); `None` on overflow.
    pub fn scaled_ceil(&self, scale: i32) -> Option<i128> {
        let base = self.digits.checked_mul(1i128.checked_shl(self.exp2)?)?;
        let e = self.exp10 + scale;
        if e >= 0 {
            base.checked_mul(10i128.checked_pow(e as u32)?)
        } else {
            let Some(div) = 10i128.checked_pow((-e) as u32) else {
                return Some(if base > 0 { 1 } else { 0 });
            };
            Some(base.div_euclid(div) + i128::from(base.rem_euclid(div) != 0))
        }
    }

    /// The value rounded up to a whole unit (bytes for memory and storage).
    pub fn value(&self) -> i64 {
        self.scaled_ceil(0).map_or(i64::MAX, |v| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
    }

    /// The value in thousandths, rounded up (millicores for CPU).
    pub fn milli_value(&self) -> i64 {
        self.scaled_ceil(3).map_or(i64::MAX, |v| v.clamp(i64::MIN.into(), i64::MAX.into()) as i64)
    }
}

impl fmt::Display for ParsedQuantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}e{}*2^{}", self.digits, self.exp10, self.exp2)
    }
}

/// Bytes of a quantity string (`128Mi` → 134217728).
pub fn parse_bytes(s: &str) -> Result<i64, QuantityError> {
    ParsedQuantity::parse(s).map(|q| q.value())
}

/// Millis of a quantity string (`500m` → 500, `1.5` → 1500).
pub fn parse_millis(s: &str) -> Result<i64, QuantityError> {
    ParsedQuantity::parse(s).map(|q| q.milli_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_quantities_convert_to_bytes() {
        let cases = [
            ("128Mi", 134_217_728),
            ("1G", 1_000_000_000),
            ("1Gi", 1_073_741_824),
            ("1.5Gi", 1_610_612_736),
            ("64Ki", 65_536),
            ("100", 100),
            ("2e3", 2000),
            ("1E", 1_000_000_000_000_000_000),
            ("0.5", 1),
            ("129M", 129_000_000),
        ];
        for (s, want) in cases {
            assert_eq!(parse_bytes(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn cpu_quantities_convert_to_millis_without_float_drift() {
        let cases = [("500m", 500), ("1.5", 1500), ("0.1", 100), ("2", 2000), ("1m", 1), ("250000u", 250), ("1n", 1)];
        for (s, want) in cases {
            assert_eq!(parse_millis(s).unwrap(), want, "{s}");
        }
    }

    #[test]
    fn malformed_quantities_are_rejected() {
        for s in ["", "abc", "1.2.3", "12Q", "Mi", "1e", "."] {
            assert!(ParsedQuantity::parse(s).is_err(), "{s:?}");
        }
    }

    #[test]
    fn negative_values_round_toward_positive_infinity() {
        assert_eq!(parse_millis("-1.5").unwrap(), -1500);
        assert_eq!(parse_bytes("-0.5").unwrap(), 0);
    }
}
