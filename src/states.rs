//! Where a verdict, a kick and a vendor call stand, as types. Each maps to the text value its
//! column has always held (`verdicts.status`, `kicks.status`, `kick_attempts.outcome`), so SQL
//! written by ops keeps working; Rust code never compares those strings itself.

use std::fmt;
use std::str::FromStr;

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// A status column value that is not one of the known names.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownState {
    kind: &'static str,
    value: String,
}

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $kind:literal { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order (the tests check them against the columns).
            #[cfg(test)]
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The column value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = UnknownState;
            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownState { kind: $kind, value: s.to_owned() }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Type<Postgres> for $name {
            fn type_info() -> PgTypeInfo {
                <&str as Type<Postgres>>::type_info()
            }
            fn compatible(ty: &PgTypeInfo) -> bool {
                <&str as Type<Postgres>>::compatible(ty)
            }
        }

        impl PgHasArrayType for $name {
            fn array_type_info() -> PgTypeInfo {
                <&str as PgHasArrayType>::array_type_info()
            }
        }

        impl Encode<'_, Postgres> for $name {
            fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
                <&str as Encode<Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl Decode<'_, Postgres> for $name {
            fn decode(value: PgValueRef<'_>) -> Result<Self, BoxDynError> {
                Ok(<&str as Decode<Postgres>>::decode(value)?.parse()?)
            }
        }
    };
}

text_enum!(
    /// `verdicts.status`.
    VerdictStatus, "verdict status" {
        /// Some user still to kick.
        Pending => "pending",
        /// Every user kicked or gone.
        Done => "done",
        /// Some user failed (deadline passed, permanent error, app not configured).
        Failed => "failed",
    }
);

text_enum!(
    /// `kicks.status`: one user of one verdict.
    KickStatus, "kick status" {
        Pending => "pending",
        Kicked => "kicked",
        /// The vendor says the room or user no longer exists: nothing left to kick.
        Gone => "gone",
        Failed => "failed",
    }
);

text_enum!(
    /// `kick_attempts.outcome`: what one vendor call came to (done / gone / retry / permanent).
    AttemptOutcome, "attempt outcome" {
        Ok => "ok",
        Gone => "gone",
        Retry => "retry",
        Permanent => "permanent",
    }
);

text_enum!(
    /// `bans.scope`: where a ban keeps its users out.
    BanScope, "ban scope" {
        /// The verdict's room of its app.
        Room => "room",
        /// Every room of the verdict's app.
        App => "app",
    }
);

text_enum!(
    /// Where a ban stands, as ops filter them (computed from `bans` as of a query).
    BanState, "ban state" {
        /// Keeps its users out now.
        Active => "active",
        /// Ran its time.
        Expired => "expired",
        /// Ended early by a person or a token server.
        Lifted => "lifted",
    }
);

text_enum!(
    /// `bans.rule_state`: the vendor rule that enforces a ban on the vendor's side too.
    RuleState, "rule state" {
        /// The app has no vendor rules.
        None => "none",
        /// To be set.
        Pending => "pending",
        /// Set; `rule_expires_at` says until when.
        InForce => "in_force",
        /// The ban was lifted: its rule is to be deleted.
        DeleteDue => "delete_due",
        Deleted => "deleted",
        /// The vendor's limit of rules in force was reached (ZEGO 50123): the ban stands without one.
        RefusedLimit => "refused_limit",
        /// The vendor has not enabled rules for the app (ZEGO 9): the ban stands without one.
        NotEnabled => "not_enabled",
        /// Refused for good (the vendor's code and message in `rule_error`).
        Failed => "failed",
    }
);

impl BanState {
    pub fn is_active(self) -> bool {
        self == BanState::Active
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_column_value() {
        for s in VerdictStatus::ALL {
            assert_eq!(s.as_str().parse::<VerdictStatus>().unwrap(), *s);
        }
        for s in KickStatus::ALL {
            assert_eq!(s.as_str().parse::<KickStatus>().unwrap(), *s);
        }
        for s in AttemptOutcome::ALL {
            assert_eq!(s.as_str().parse::<AttemptOutcome>().unwrap(), *s);
        }
        for s in RuleState::ALL {
            assert_eq!(s.as_str().parse::<RuleState>().unwrap(), *s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str(), "JSON shows the column value");
        }
        assert!("deferred".parse::<VerdictStatus>().is_err());
    }

    #[test]
    fn the_column_values_are_the_ones_the_schema_checks() {
        // The CHECK constraints of migrations/20261122000001_audit_schema.sql, verbatim.
        let names = |all: &[&str]| all.join(",");
        assert_eq!(names(&VerdictStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()), "pending,done,failed");
        assert_eq!(
            names(&KickStatus::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            "pending,kicked,gone,failed"
        );
        assert_eq!(
            names(&AttemptOutcome::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            "ok,gone,retry,permanent"
        );
        // migrations/20261203000004_bans.sql.
        assert_eq!(
            names(&RuleState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()),
            "none,pending,in_force,delete_due,deleted,refused_limit,not_enabled,failed"
        );
        assert_eq!(names(&BanScope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>()), "room,app");
    }
}
