//! Byte sizes on the command line: parsing what users type (`20G`, `1.5GiB`,
//! `4096`) and printing sizes for people (`20 GiB`).
//!
//! Every unit is binary (K = 1024), as `qemu-img` and `truncate` read them,
//! because disk sizes are almost always meant as powers of two; `B`, `iB` and
//! `b` suffixes are accepted and change nothing. A fraction is allowed when it
//! comes out to a whole number of bytes (`1.5G`, `0.5K`), otherwise the size is
//! refused rather than silently rounded, so a volume never ends up a few bytes
//! smaller than asked. Zero parses; whether zero makes sense is the caller's
//! decision (`volume create` refuses it, `volume resize --allow-shrink` takes it).

/// Suffix letters and their power of 1024.
const UNITS: [(char, u32); 6] = [('B', 0), ('K', 1), ('M', 2), ('G', 3), ('T', 4), ('P', 5)];

/// Parse a size such as `20G`, `512M`, `1T`, `4096`, `1.5G`, `2GiB`, `100MB`.
/// The error says what was wrong and what a valid size looks like.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!("invalid size {text:?}: {why}; give a number with an optional binary unit, e.g. 4096, 512M, 20G, 1.5T")
    };
    let s = text.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim_start());
    if number.is_empty() {
        return Err(bad("it does not start with a number"));
    }
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if whole.is_empty() && frac.is_empty() || frac.contains('.') {
        return Err(bad("the number is malformed"));
    }
    let power = parse_unit(unit).ok_or_else(|| bad(&format!("unknown unit {unit:?} (use K, M, G, T or P)")))?;
    // u128 keeps the arithmetic exact for anything that fits in u64 afterwards.
    let multiplier: u128 = 1u128 << (10 * power);
    let too_big = || bad("it is larger than 16 EiB");
    let whole_value: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| too_big())? };
    let mut bytes = whole_value.checked_mul(multiplier).ok_or_else(too_big)?;
    if !frac.is_empty() {
        if frac.len() > 18 {
            return Err(bad("too many decimal places"));
        }
        let frac_value: u128 = frac.parse().map_err(|_| bad("the fraction is malformed"))?;
        let scale = 10u128.pow(frac.len() as u32);
        let scaled = frac_value * multiplier;
        if !scaled.is_multiple_of(scale) {
            return Err(bad("it is not a whole number of bytes"));
        }
        bytes = bytes.checked_add(scaled / scale).ok_or_else(too_big)?;
    }
    u64::try_from(bytes).map_err(|_| too_big())
}

/// The power of 1024 for a unit suffix: `""`, `B`, `K`, `KB`, `KiB`, ...
fn parse_unit(unit: &str) -> Option<u32> {
    let mut chars = unit.chars();
    let Some(first) = chars.next() else {
        return Some(0);
    };
    let (_, power) = *UNITS.iter().find(|(c, _)| *c == first.to_ascii_uppercase())?;
    let rest: String = chars.collect();
    let ok = if power == 0 { rest.is_empty() } else { matches!(rest.as_str(), "" | "B" | "b" | "iB" | "ib") };
    ok.then_some(power)
}

/// A size for people: `0 B`, `512 B`, `4 KiB`, `1.5 GiB`, `20 GiB`, with at
/// most two decimals (trailing zeros dropped). JSON output uses exact bytes.
pub fn human(bytes: u64) -> String {
    const NAMES: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    while unit + 1 < NAMES.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", NAMES[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_numbers_are_bytes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096B"), Ok(4096));
    }

    #[test]
    fn units_are_binary_with_any_suffix_style() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("20g"), Ok(20 << 30));
        assert_eq!(parse_size("20GiB"), Ok(20 << 30));
        assert_eq!(parse_size("20GB"), Ok(20 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("2P"), Ok(2 << 50));
        assert_eq!(parse_size(" 8 K "), Ok(8192));
    }

    #[test]
    fn fractions_must_come_to_whole_bytes() {
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size(".5K"), Ok(512));
        assert!(parse_size("1.1K").is_err());
        assert!(parse_size("1.5").is_err());
    }

    #[test]
    fn junk_is_refused_with_an_example() {
        for junk in
            ["", "G", "-1G", "1X", "1GG", "1..5G", "1.2.3G", "twenty", "1 G B", "1BiB", "99999999999999999999999"]
        {
            let err = parse_size(junk).expect_err(junk);
            assert!(err.contains("e.g."), "{err}");
        }
        assert!(parse_size("16E").is_err());
        assert!(parse_size("16384P").is_err());
    }

    #[test]
    fn human_sizes_pick_the_largest_whole_unit() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(4096), "4 KiB");
        assert_eq!(human(20 << 30), "20 GiB");
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human((1 << 30) + (1 << 20)), "1 GiB");
        assert_eq!(human(u64::MAX), "16 EiB");
    }
}
