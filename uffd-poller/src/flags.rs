//! `named_flags!`: the small bit-set newtype behind every flag type of the crate (features,
//! register modes, ioctl masks, fault flags, operation modes). Each type knows the names of
//! its bits, keeps bits it does not know (a newer kernel may set them) and prints as
//! `NAME | NAME | 0x...`.

/// Defines a `u64` bit-set newtype with named constants.
macro_rules! named_flags {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                const $flag:ident = $value:expr;
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(u64);

        impl $name {
            $(
                $(#[$fmeta])*
                pub const $flag: Self = Self($value);
            )+

            /// Every named bit with its name, in bit order of declaration.
            pub const NAMED: &'static [(&'static str, Self)] = &[$((stringify!($flag), Self::$flag)),+];

            /// The empty set.
            pub const fn empty() -> Self {
                Self(0)
            }

            /// Every named bit.
            pub const fn all() -> Self {
                Self(0 $(| $value)+)
            }

            /// The raw bits.
            pub const fn bits(self) -> u64 {
                self.0
            }

            /// A set from raw bits, keeping bits that have no name here.
            pub const fn from_bits_retain(bits: u64) -> Self {
                Self(bits)
            }

            /// Bits set here that have no name in this version of the crate.
            pub const fn unknown_bits(self) -> u64 {
                self.0 & !Self::all().0
            }

            /// True when no bit is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// True when every bit of `other` is set here.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True when at least one bit of `other` is set here.
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// Bits set in either.
            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }

            /// Bits set in both.
            pub const fn intersection(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }

            /// Bits set here but not in `other`.
            pub const fn difference(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }

            /// The names of the named bits that are set, in declaration order.
            pub fn names(self) -> impl Iterator<Item = &'static str> {
                Self::NAMED
                    .iter()
                    .filter(move |(_, f)| self.contains(*f))
                    .map(|(n, _)| *n)
            }
        }

        impl ::std::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                self.union(rhs)
            }
        }

        impl ::std::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                *self = self.union(rhs);
            }
        }

        impl ::std::ops::BitAnd for $name {
            type Output = Self;
            fn bitand(self, rhs: Self) -> Self {
                self.intersection(rhs)
            }
        }

        impl ::std::ops::Sub for $name {
            type Output = Self;
            fn sub(self, rhs: Self) -> Self {
                self.difference(rhs)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut first = true;
                for name in self.names() {
                    if !first {
                        f.write_str(" | ")?;
                    }
                    f.write_str(name)?;
                    first = false;
                }
                let unknown = self.unknown_bits();
                if unknown != 0 {
                    if !first {
                        f.write_str(" | ")?;
                    }
                    write!(f, "{unknown:#x}")?;
                    first = false;
                }
                if first {
                    f.write_str("(none)")?;
                }
                Ok(())
            }
        }

        impl ::std::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self)
            }
        }
    };
}

pub(crate) use named_flags;

#[cfg(test)]
mod tests {
    named_flags! {
        /// Test set.
        pub struct Demo {
            /// A.
            const A = 1 << 0;
            /// B.
            const B = 1 << 3;
        }
    }

    #[test]
    fn set_algebra() {
        let ab = Demo::A | Demo::B;
        assert!(ab.contains(Demo::A));
        assert!(!Demo::A.contains(ab));
        assert!(ab.intersects(Demo::B));
        assert_eq!(ab - Demo::A, Demo::B);
        assert_eq!(ab & Demo::B, Demo::B);
        assert_eq!(Demo::all(), ab);
        assert!(Demo::empty().is_empty());
        assert_eq!(ab.bits(), 0b1001);
    }

    #[test]
    fn display_names_and_unknown_bits() {
        assert_eq!((Demo::A | Demo::B).to_string(), "A | B");
        assert_eq!(Demo::empty().to_string(), "(none)");
        let odd = Demo::from_bits_retain(0b1_0001);
        assert_eq!(odd.unknown_bits(), 0b1_0000);
        assert_eq!(odd.to_string(), "A | 0x10");
        assert_eq!(format!("{odd:?}"), "Demo(A | 0x10)");
        assert_eq!(odd.names().collect::<Vec<_>>(), ["A"]);
    }
}
