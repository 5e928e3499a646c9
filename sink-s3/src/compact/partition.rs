//! Partition paths read back: which hour a directory holds.

/// The start of the partition's hour, from a path the template made: `Some(None)` when the
/// template has no full date, `None` when the path is not one of the template's.
pub fn parse_partition(template: &str, path: &str) -> Option<Option<i64>> {
    let (mut y, mut mo, mut d, mut h) = (None, None, None, None);
    let mut rest = path;
    let mut t = template;
    while !t.is_empty() {
        if let Some(after) = t.strip_prefix('{') {
            let (var, after) = after.split_once('}')?;
            t = after;
            let digits = |n: usize, rest: &mut &str| -> Option<u32> {
                let s = rest.get(..n)?;
                if !s.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                *rest = &rest[n..];
                s.parse().ok()
            };
            match var {
                "yyyy" => y = Some(digits(4, &mut rest)?),
                "MM" => mo = Some(digits(2, &mut rest)?),
                "dd" => d = Some(digits(2, &mut rest)?),
                "HH" => h = Some(digits(2, &mut rest)?),
                "DistributionId" => {
                    // Up to the template's next literal character (ids hold no '/').
                    let stop = t.chars().next();
                    let end = match stop {
                        Some(c) => rest.find(c)?,
                        None => rest.len(),
                    };
                    if end == 0 || rest[..end].contains('/') {
                        return None;
                    }
                    rest = &rest[end..];
                }
                _ => return None,
            }
        } else {
            let c = t.chars().next()?;
            rest = rest.strip_prefix(c)?;
            t = &t[c.len_utf8()..];
        }
    }
    if !rest.is_empty() {
        return None;
    }
    Some(match (y, mo, d, h) {
        (Some(y), Some(mo), Some(d), Some(h))
            if (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 =>
        {
            let days = edgelog_record::time::days_from_civil(y as i64, mo, d);
            Some(days * 86_400_000 + h as i64 * 3_600_000)
        }
        (Some(_), Some(_), Some(_), Some(_)) => return None,
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_parse_back_from_the_template() {
        let t = crate::config::DEFAULT_TEMPLATE;
        let hour = edgelog_record::time::days_from_civil(2026, 11, 26) * 86_400_000 + 5 * 3_600_000;
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=05"),
            Some(Some(hour))
        );
        assert_eq!(
            parse_partition(t, "DistributionId=/year=2026/month=11/day=26/hour=05"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=13/day=26/hour=05"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=24"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=5"),
            None
        );
        assert_eq!(
            parse_partition(t, "DistributionId=E1/year=2026/month=11/day=26/hour=05/x"),
            None
        );
        assert_eq!(parse_partition(t, "other/thing"), None);
        assert_eq!(
            parse_partition("{DistributionId}/{HH}", "E1/07"),
            Some(None)
        );
        assert_eq!(parse_partition("{DistributionId}/{HH}", "E1"), None);
    }
}
