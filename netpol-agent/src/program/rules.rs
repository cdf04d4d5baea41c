//! Where each pod's rules are counted. Rule sets name rules by position (rule sets are
//! shared by pods whose policies allow alike); a pod's `RuleNames` say what its positions
//! name. Each distinct list of names gets a block of `RULE_COUNTERS` slots, shared by the
//! pods with that list: position `k` of such a pod is counted in slot `base + k - 1`
//! (`netpol_common::rule_index`). A block is zeroed when it is handed out and freed when
//! no endpoint uses it; what its slots counted is carried over to their rules, so a
//! rule's count goes on when its pods' lists change (a policy added beside it). Freed
//! blocks that touch merge. Past `sizes::RULES` slots, rules are not named (base 0)
//! rather than refused: naming is for operators, verdicts do not depend on it.

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
    /// Sorted by base, none touching another or `next`.
    free: Vec<Block>,
    /// The first slot not handed out above every block (slot 0 is never one).
    next: u32,
    /// What freed blocks counted, per rule still named.
    carried: HashMap<RuleTag, u64>,
}

impl RuleTables {
    pub(super) fn new() -> Self {
        RuleTables {
            tables: HashMap::new(),
            free: Vec::new(),
            next: 1,
            carried: HashMap::new(),
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
            let b = self.free[i];
            if b.len > len {
                self.free[i] = Block {
                    base: b.base + len,
                    len: b.len - len,
                };
            } else {
                self.free.remove(i);
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

    /// Frees the blocks whose first slot no endpoint uses any more, carrying what they
    /// counted over to their rules.
    pub(super) fn keep_used(
        &mut self,
        used: &BTreeSet<u32>,
        maps: &impl MapOps,
    ) -> Result<(), MapError> {
        let gone: Vec<Arc<Vec<RuleTag>>> = self
            .tables
            .iter()
            .filter(|(_, b)| !used.contains(&b.base))
            .map(|(names, _)| names.clone())
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for names in gone {
            let Some(block) = self.tables.remove(&names) else {
                continue;
            };
            for (slot, rule) in (block.base..).zip(names.iter()) {
                let counted = maps.read_rule_counter(slot)?;
                *self.carried.entry(rule.clone()).or_default() += counted;
            }
            self.free.push(block);
        }
        self.coalesce();
        // A rule no list names any more starts again from 0 if it comes back.
        let named: std::collections::HashSet<&RuleTag> =
            self.tables.keys().flat_map(|n| n.iter()).collect();
        self.carried.retain(|rule, _| named.contains(rule));
        Ok(())
    }

    /// Merges free blocks that touch, and gives the last back to `next`.
    fn coalesce(&mut self) {
        self.free.sort_by_key(|b| b.base);
        let mut merged: Vec<Block> = Vec::with_capacity(self.free.len());
        for b in self.free.drain(..) {
            match merged.last_mut() {
                Some(last) if last.base + last.len == b.base => last.len += b.len,
                _ => merged.push(b),
            }
        }
        while let Some(last) = merged.last()
            && last.base + last.len == self.next
        {
            self.next = last.base;
            merged.pop();
        }
        self.free = merged;
    }

    /// Packets per rule: what its live slots count, and what freed ones did.
    pub(super) fn packets(&self, maps: &impl MapOps) -> Result<BTreeMap<RuleTag, u64>, MapError> {
        let mut out: BTreeMap<RuleTag, u64> =
            self.carried.iter().map(|(r, n)| (r.clone(), *n)).collect();
        for (slot, rule) in self.names() {
            *out.entry(rule).or_default() += maps.read_rule_counter(slot)?;
        }
        Ok(out)
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
