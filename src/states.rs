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
        #[serde(rename_all = "lowercase")]
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
    }
}
