//! Where each pod's rules are counted. Rule sets name rules by position (rule sets are
//! shared by pods whose policies allow alike); a pod's `RuleNames` say what its positions
//! name. Each distinct list of names gets a block of `RULE_COUNTERS` slots, shared by the
//! pods with that list: position `k` of such a pod is counted in slot `base + k - 1`
//! (`netpol_common::rule_index`). A block is zeroed when it is handed out and freed when
//! no endpoint uses it. Past `sizes::RULES` slots, rules are not named (base 0) rather
//! than refused: naming is for operators, verdicts do not depend on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use netpol_common::sizes;

use super::{MapError, MapOps};
use crate::compile::allowed::RuleTag;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Block {
    base: u32,
    len: u32,
}

pub(super) struct RuleTables {
    tables: HashMap<Arc<Vec<RuleTag>>, Block>,
    free: Vec<Block>,
    /// The first slot never handed out (slot 0 is never one).
    next: u32,
}

impl RuleTables {
    pub(super) fn new() -> Self {
        RuleTables {
            tables: HashMap::new(),
            free: Vec::new(),
            next: 1,
        }
    }

    /// The first slot of `names` (a block is handed out, zeroed, the first time); 0 when
    /// it names nothing or the counters are full.
    pub(super) fn base_of(
        &mut self,
        names: &Arc<Vec<RuleTag>>,
        maps: &mut impl MapOps,
    ) -> Result<u32, MapError> {
        if names.is_empty() {
            return Ok(0);
        }
        if let Some(b) = self.tables.get(names) {
            return Ok(b.base);
        }
        let Ok(len) = u32::try_from(names.len()) else {
            return Ok(0);
        };
        let Some(block) = self.take(len) else {
            return Ok(0);
        };
        for slot in block.base..block.base + block.len {
            maps.reset_rule_counter(slot)?;
        }
        self.tables.insert(names.clone(), block);
        Ok(block.base)
    }

    fn take(&mut self, len: u32) -> Option<Block> {
        if let Some(i) = self.free.iter().position(|b| b.len >= len) {
            let b = self.free.swap_remove(i);
            if b.len > len {
                self.free.push(Block {
                    base: b.base + len,
                    len: b.len - len,
                });
            }
            return Some(Block { base: b.base, len });
        }
        let end = self.next.checked_add(len)?;
        if end > sizes::RULES {
            return None;
        }
        let base = self.next;
        self.next = end;
        Some(Block { base, len })
    }

    /// Frees the blocks whose first slot no endpoint uses any more.
    pub(super) fn keep_used(&mut self, used: &BTreeSet<u32>) {
        let free = &mut self.free;
        self.tables.retain(|_, b| {
            let keep = used.contains(&b.base);
            if !keep {
                free.push(*b);
            }
            keep
        });
    }

    /// Every counted rule, by slot.
    pub(super) fn names(&self) -> BTreeMap<u32, RuleTag> {
        let mut out = BTreeMap::new();
        for (names, b) in &self.tables {
            for (slot, rule) in (b.base..).zip(names.iter()) {
                out.insert(slot, rule.clone());
            }
        }
        out
    }
}
