//! Half-open time intervals `[start, end)` in nanoseconds and set operations on sorted,
//! disjoint lists of them.

/// A sorted list of disjoint, non-empty, non-touching intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct IntervalSet(Vec<(u64, u64)>);

impl IntervalSet {
    /// The union of arbitrary intervals (empty ones are dropped).
    pub(crate) fn from_intervals(iter: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = iter.into_iter().filter(|&(a, b)| b > a).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (a, b) in v {
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        IntervalSet(out)
    }

    /// Total covered length.
    pub(crate) fn total(&self) -> u64 {
        self.0.iter().map(|&(a, b)| b - a).sum()
    }

    /// Union of two sets.
    pub(crate) fn union(&self, other: &Self) -> Self {
        Self::from_intervals(self.0.iter().chain(other.0.iter()).copied())
    }

    /// Intersection of two sets.
    pub(crate) fn intersect(&self, other: &Self) -> Self {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < other.0.len() {
            let (a0, a1) = self.0[i];
            let (b0, b1) = other.0[j];
            let lo = a0.max(b0);
            let hi = a1.min(b1);
            if hi > lo {
                out.push((lo, hi));
            }
            if a1 < b1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        IntervalSet(out)
    }

    /// `self` minus `other`.
    pub(crate) fn subtract(&self, other: &Self) -> Self {
        let mut out = Vec::new();
        let mut j = 0;
        for &(a0, a1) in &self.0 {
            let mut cur = a0;
            while j < other.0.len() && other.0[j].1 <= cur {
                j += 1;
            }
            let mut k = j;
            while k < other.0.len() && other.0[k].0 < a1 {
                let (b0, b1) = other.0[k];
                if b0 > cur {
                    out.push((cur, b0));
                }
                cur = cur.max(b1);
                if cur >= a1 {
                    break;
                }
                k += 1;
            }
            if cur < a1 {
                out.push((cur, a1));
            }
        }
        IntervalSet(out)
    }

    /// The part of the set inside `[lo, hi)`.
    pub(crate) fn clip(&self, lo: u64, hi: u64) -> Self {
        self.intersect(&IntervalSet::from_intervals([(lo, hi)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn set(v: &[(u64, u64)]) -> IntervalSet {
        IntervalSet::from_intervals(v.iter().copied())
    }

    #[test]
    fn union_merges_overlapping_and_touching() {
        let s = set(&[(5, 10), (0, 3), (3, 4), (8, 12), (20, 20)]);
        assert_eq!(s.0, vec![(0, 4), (5, 12)]);
        assert_eq!(s.total(), 11);
    }

    #[test]
    fn intersect_and_subtract_known() {
        let a = set(&[(0, 10), (20, 30)]);
        let b = set(&[(5, 25)]);
        assert_eq!(a.intersect(&b).0, vec![(5, 10), (20, 25)]);
        assert_eq!(a.subtract(&b).0, vec![(0, 5), (25, 30)]);
        assert_eq!(b.subtract(&a).0, vec![(10, 20)]);
        assert_eq!(a.clip(8, 22).0, vec![(8, 10), (20, 22)]);
    }

    fn covered(s: &IntervalSet, t: u64) -> bool {
        s.0.iter().any(|&(a, b)| a <= t && t < b)
    }

    proptest! {
        #[test]
        fn set_ops_match_pointwise_definition(
            a in proptest::collection::vec((0u64..50, 0u64..10), 0..6),
            b in proptest::collection::vec((0u64..50, 0u64..10), 0..6),
        ) {
            let a = set(&a.iter().map(|&(s, l)| (s, s + l)).collect::<Vec<_>>());
            let b = set(&b.iter().map(|&(s, l)| (s, s + l)).collect::<Vec<_>>());
            let (i, d, u) = (a.intersect(&b), a.subtract(&b), a.union(&b));
            for t in 0..70 {
                prop_assert_eq!(covered(&i, t), covered(&a, t) && covered(&b, t));
                prop_assert_eq!(covered(&d, t), covered(&a, t) && !covered(&b, t));
                prop_assert_eq!(covered(&u, t), covered(&a, t) || covered(&b, t));
            }
            prop_assert_eq!(i.total() + d.total(), a.total());
        }
    }
}
