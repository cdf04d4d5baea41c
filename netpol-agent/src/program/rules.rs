//! Rule ids: what the datapath names a rule by in port sets, peer entries, tracked
//! connections and verdict events, and the index of its packet counter.
//!
//! An id is held while some written entry names its rule and is reused after that, its
//! counter zeroed first. Past `sizes::RULES` rules, allows are not named (`RULE_UNNAMED`)
//! rather than refused: naming is for operators, the verdict does not depend on it.

use std::collections::{BTreeMap, HashMap};

use netpol_common::{RULE_UNNAMED, sizes};

use super::{Ids, MapError, MapOps};
use crate::compile::allowed::RuleTag;

pub(super) struct RuleIds {
    /// Id and how many written entries name it.
    held: HashMap<RuleTag, (u32, usize)>,
    names: BTreeMap<u32, RuleTag>,
    ids: Ids,
}

impl RuleIds {
    pub(super) fn new() -> Self {
        RuleIds {
            held: HashMap::new(),
            names: BTreeMap::new(),
            // 0 is `RULE_UNNAMED`.
            ids: Ids::new(1, sizes::RULES, "rules"),
        }
    }

    /// The id of `rule`, held once more.
    pub(super) fn acquire(
        &mut self,
        rule: &RuleTag,
        maps: &mut impl MapOps,
    ) -> Result<u32, MapError> {
        if let Some((id, refs)) = self.held.get_mut(rule) {
            *refs += 1;
            return Ok(*id);
        }
        let Ok(id) = self.ids.take() else {
            return Ok(RULE_UNNAMED);
        };
        maps.reset_rule_counter(id)?;
        self.held.insert(rule.clone(), (id, 1));
        self.names.insert(id, rule.clone());
        Ok(id)
    }

    pub(super) fn release(&mut self, id: u32) {
        // `RULE_UNNAMED` (ids ran out) is never held.
        let Some(rule) = self.names.get(&id) else {
            return;
        };
        if let Some((_, refs)) = self.held.get_mut(rule) {
            *refs -= 1;
            if *refs == 0 {
                self.held.remove(rule);
                self.names.remove(&id);
                self.ids.release(id);
            }
        }
    }

    /// Every rule with an id.
    pub(super) fn names(&self) -> &BTreeMap<u32, RuleTag> {
        &self.names
    }
}
