//! A value's hash, computed once. Rule sets and identities key the programmer's maps and
//! are looked up on every change; a rule set holds thousands of entries, so hashing it
//! again each time was most of a small change's cost.
//!
//! The owner hashes its fields on first use and never changes them afterwards (sets and
//! identities are finished before anything hashes them).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::OnceLock;

#[derive(Clone, Default)]
pub struct CachedHash(OnceLock<u64>);

impl CachedHash {
    /// The cached hash, or `fields`' hash, computed now and kept.
    pub fn get<T: Hash + ?Sized>(&self, fields: &T) -> u64 {
        *self.0.get_or_init(|| {
            let mut h = DefaultHasher::new();
            fields.hash(&mut h);
            h.finish()
        })
    }

    /// True when both hashes are known and differ: the values differ too, and comparing
    /// them field by field can be skipped.
    pub fn known_different(&self, other: &Self) -> bool {
        matches!((self.0.get(), other.0.get()), (Some(a), Some(b)) if a != b)
    }
}

/// Equality, hashing and order of a type by its `fields()`, with its `hash: CachedHash`
/// filled at first use: equal when the same value or equal fields (told apart at once when
/// both hashes are known and differ), hashed by the cached hash, ordered by the fields.
macro_rules! by_fields {
    ($t:ty) => {
        impl PartialEq for $t {
            fn eq(&self, other: &Self) -> bool {
                std::ptr::eq(self, other)
                    || (!self.hash.known_different(&other.hash) && self.fields() == other.fields())
            }
        }

        impl Eq for $t {}

        impl std::hash::Hash for $t {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                state.write_u64(self.hash.get(&self.fields()));
            }
        }

        impl PartialOrd for $t {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl Ord for $t {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if std::ptr::eq(self, other) {
                    return std::cmp::Ordering::Equal;
                }
                self.fields().cmp(&other.fields())
            }
        }
    };
}
pub(crate) use by_fields;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_computed_once_and_compared_only_when_known() {
        let (a, b) = (CachedHash::default(), CachedHash::default());
        assert!(!a.known_different(&b), "nothing known yet");
        let ha = a.get(&1u32);
        assert_eq!(a.get(&2u32), ha, "kept, not recomputed");
        assert!(!a.known_different(&b), "one side unknown");
        b.get(&2u32);
        assert!(a.known_different(&b));
        let c = CachedHash::default();
        c.get(&1u32);
        assert!(!a.known_different(&c), "same fields, same hash");
    }
}
