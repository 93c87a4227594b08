//! Which tenants a read may see: the one scope every read path is confined to.

use crate::OrgId;

/// Which tenants a read may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tenancy {
    /// Every tenant: platform administrators, operators, service accounts with a scope.
    All,
    /// One organization.
    Org(OrgId),
    /// No tenant: anonymous callers, who read no tenant data.
    None,
}

impl Tenancy {
    /// The one organization, if the tenancy is confined to one.
    pub fn org(&self) -> Option<OrgId> {
        match self {
            Tenancy::Org(org) => Some(*org),
            Tenancy::All | Tenancy::None => None,
        }
    }

    /// Whether a row of `org` (or of no tenant) is visible.
    pub fn sees(&self, org: Option<OrgId>) -> bool {
        match self {
            Tenancy::All => true,
            Tenancy::Org(mine) => org == Some(*mine),
            Tenancy::None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_tenancy_sees_what_it_should() {
        let mine = OrgId::new_v7();
        let other = OrgId::new_v7();
        assert!(Tenancy::All.sees(Some(other)) && Tenancy::All.sees(None));
        assert!(Tenancy::Org(mine).sees(Some(mine)));
        assert!(!Tenancy::Org(mine).sees(Some(other)) && !Tenancy::Org(mine).sees(None));
        assert!(!Tenancy::None.sees(Some(mine)) && !Tenancy::None.sees(None));
        assert_eq!(Tenancy::Org(mine).org(), Some(mine));
        assert_eq!(Tenancy::All.org(), None);
    }
}
