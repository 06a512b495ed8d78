//! Codes like `7-lantern-harbor`: a nameplate number (public: it names the meeting place at the
//! relay) and two words (secret: with the nameplate, the PAKE password). The relay only ever
//! sees a hash of the nameplate, so it cannot learn the words, and a wrong guess costs an
//! attacker one online attempt (SPAKE2 gives no offline dictionary attack).

use sha2::{Digest, Sha256};

use crate::wire::rendezvous::{SessionId, SESSION_LEN};

/// 256 short, distinct, easily typed words: 8 bits each.
pub const WORDS: [&str; 256] = [
    "acid", "acorn", "actor", "adobe", "agent", "alarm", "album", "alley", "amber", "anchor",
    "angle", "apple", "apron", "arrow", "aspen", "atlas", "attic", "autumn", "bacon", "badge",
    "bagel", "baker", "bamboo", "banjo", "barley", "basin", "beacon", "beaver", "bench", "berry",
    "bison", "blade", "blanket", "blossom", "bonnet", "bottle", "breeze", "brick", "bridge",
    "bronze", "broom", "bucket", "buffalo", "bugle", "butter", "cabin", "cactus", "camel",
    "candle", "canoe", "canyon", "carbon", "carpet", "cedar", "cellar", "chalk", "cherry", "chess",
    "cider", "cinder", "circle", "citrus", "clover", "cobalt", "cobra", "cocoa", "comet",
    "compass", "copper", "coral", "cotton", "cradle", "crane", "crater", "crayon", "cricket",
    "crystal", "cupcake", "dagger", "daisy", "delta", "denim", "desert", "diesel", "dingo",
    "dolphin", "domino", "donkey", "dragon", "drum", "eagle", "easel", "echo", "eclipse", "elbow",
    "ember", "emerald", "engine", "falcon", "feather", "fennel", "ferry", "fiddle", "finch",
    "flint", "forest", "fossil", "fountain", "fox", "galaxy", "garlic", "garnet", "gecko",
    "geyser", "ginger", "glacier", "goblet", "gopher", "granite", "grape", "gravel", "guitar",
    "hammer", "harbor", "harvest", "hazel", "helmet", "heron", "hickory", "honey", "hornet",
    "iceberg", "igloo", "indigo", "island", "ivory", "jacket", "jaguar", "jasmine", "jelly",
    "jigsaw", "juniper", "kayak", "kettle", "kiwi", "koala", "ladder", "lagoon", "lantern",
    "lemon", "lentil", "lilac", "linen", "lizard", "lobster", "locket", "lotus", "lumber",
    "magnet", "mango", "maple", "marble", "meadow", "melon", "meteor", "mitten", "molar",
    "monsoon", "mosaic", "muffin", "mustard", "nectar", "needle", "nickel", "nutmeg", "oasis",
    "oatmeal", "ocean", "olive", "onion", "orbit", "orchid", "otter", "oyster", "paddle", "panda",
    "papaya", "parrot", "pebble", "pelican", "pepper", "piano", "pickle", "pigeon", "pillow",
    "pine", "planet", "plaza", "pluto", "pocket", "pollen", "pony", "poppy", "prairie", "pretzel",
    "pumpkin", "puzzle", "quartz", "quill", "rabbit", "radar", "radish", "raven", "reef", "ribbon",
    "river", "robin", "rocket", "saddle", "saffron", "salmon", "sandal", "satin", "scarf",
    "shadow", "shovel", "silver", "sketch", "sleigh", "sparrow", "spider", "spruce", "squid",
    "statue", "summit", "sunset", "swan", "tablet", "tango", "teapot", "thistle", "thunder",
    "tiger", "timber", "toast", "tomato", "topaz", "tractor", "tulip", "tundra", "turtle",
    "umbrella", "valley", "velvet", "violet", "volcano",
];

/// Highest nameplate natkit picks by itself (seven digits, over 23 bits); users may choose
/// any up to `u32::MAX`. Wide enough that 10,000 listeners at once collide rarely (each new
/// one with odds of 1 in 1,000) and that holding them all would take millions of slots at
/// the relay; a collision or a squatter is then seen before the code is shown, and the
/// listener draws another ([`Code::is_generated`]).
pub const MAX_NAMEPLATE: u32 = 9_999_999;

/// Why a code did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not `NUMBER-word-word`.
    #[error("a code looks like 7-lantern-harbor: a number and two words, joined by '-'")]
    Shape,
    /// The number part is not a number.
    #[error("the code must start with a number (the nameplate), not {0:?}")]
    Nameplate(String),
    /// A word that is not in the list (typo?).
    #[error("{0:?} is not one of natkit's code words (typo?)")]
    Word(String),
}

/// A punch code. Two codes are equal when they read the same: whether natkit drew one is
/// not part of it.
#[derive(Debug, Clone, Eq)]
pub struct Code {
    /// Public part.
    pub nameplate: u32,
    /// Secret part: indices into [`WORDS`].
    pub words: [u8; 2],
    /// Drawn by [`Code::generate`] (not typed): its nameplate may be replaced by a free one
    /// before the code is shown.
    generated: bool,
    /// One peer's session under a `punch serve` code
    /// ([`crate::proto::punch::serve::ServeCode::sub_code`]): its own session id and PAKE
    /// password instead of the nameplate's and the words'.
    sub: Option<(SessionId, Vec<u8>)>,
}

impl PartialEq for Code {
    fn eq(&self, o: &Code) -> bool {
        (self.nameplate, self.words, &self.sub) == (o.nameplate, o.words, &o.sub)
    }
}

impl Code {
    /// A fresh random code from `rng` (the app passes `rand::thread_rng()`).
    pub fn generate(rng: &mut impl rand::RngCore) -> Code {
        use rand::Rng;
        Code {
            nameplate: rng.gen_range(1..=MAX_NAMEPLATE),
            words: rng.gen(),
            generated: true,
            sub: None,
        }
    }

    /// Whether natkit drew this code: a listener then claims its nameplate at the relay
    /// before showing it, and draws another when that one is taken or has a waiting peer
    /// (a fresh nameplate has none: someone there is a collision or a squatter).
    pub fn is_generated(&self) -> bool {
        self.generated
    }

    /// Parses `7-lantern-harbor` (case-insensitive, surrounding spaces ignored).
    pub fn parse(s: &str) -> Result<Code, CodeError> {
        let s = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = s.split('-').collect();
        let [n, a, b] = parts.as_slice() else {
            return Err(CodeError::Shape);
        };
        let nameplate = n
            .parse::<u32>()
            .map_err(|_| CodeError::Nameplate(n.to_string()))?;
        let idx = |w: &str| {
            WORDS
                .iter()
                .position(|x| *x == w)
                .map(|i| i as u8)
                .ok_or_else(|| CodeError::Word(w.to_string()))
        };
        Ok(Code {
            nameplate,
            words: [idx(a)?, idx(b)?],
            generated: false,
            sub: None,
        })
    }

    /// A serve peer's session: `session` at the relay, `password` for the PAKE (see
    /// [`crate::proto::punch::serve`]); shown as the serve code's nameplate and first words.
    pub fn sub_session(
        nameplate: u32,
        words: [u8; 2],
        session: SessionId,
        password: Vec<u8>,
    ) -> Code {
        Code {
            nameplate,
            words,
            generated: false,
            sub: Some((session, password)),
        }
    }

    /// Whether this is one peer's session under a serve code (neither typed nor drawn).
    pub fn is_sub(&self) -> bool {
        self.sub.is_some()
    }

    /// The relay session id: a hash of the nameplate only.
    pub fn session_id(&self) -> SessionId {
        if let Some((s, _)) = &self.sub {
            return *s;
        }
        let h = Sha256::new()
            .chain_update(b"natkit punch v1 nameplate")
            .chain_update(self.nameplate.to_be_bytes())
            .finalize();
        let mut id = [0u8; SESSION_LEN];
        id.copy_from_slice(&h[..SESSION_LEN]);
        id
    }

    /// The PAKE password: the whole code, normalised.
    pub fn password(&self) -> Vec<u8> {
        if let Some((_, p)) = &self.sub {
            return p.clone();
        }
        self.to_string().into_bytes()
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}-{}-{}",
            self.nameplate, WORDS[self.words[0] as usize], WORDS[self.words[1] as usize]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_distinct_and_lowercase() {
        let mut w = WORDS.to_vec();
        w.sort();
        w.dedup();
        assert_eq!(w.len(), 256);
        assert!(WORDS
            .iter()
            .all(|x| x.chars().all(|c| c.is_ascii_lowercase())));
    }

    #[test]
    fn roundtrip_and_normalisation() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..100 {
            let c = Code::generate(&mut rng);
            assert_eq!(Code::parse(&c.to_string()), Ok(c.clone()));
            assert!((1..=MAX_NAMEPLATE).contains(&c.nameplate));
        }
        let c = Code::parse("  7-Lantern-HARBOR ").unwrap();
        assert_eq!(c.to_string(), "7-lantern-harbor");
        assert!(!c.is_generated() && Code::generate(&mut rng).is_generated());
    }

    #[test]
    fn session_id_depends_on_the_nameplate_only() {
        let a = Code::parse("7-lantern-harbor").unwrap();
        let b = Code::parse("7-acid-acorn").unwrap();
        let c = Code::parse("8-lantern-harbor").unwrap();
        assert_eq!(a.session_id(), b.session_id());
        assert_ne!(a.session_id(), c.session_id());
        assert_ne!(a.password(), b.password());
    }

    #[test]
    fn bad_codes_say_why() {
        assert_eq!(Code::parse("lantern-harbor"), Err(CodeError::Shape));
        assert_eq!(
            Code::parse("x-lantern-harbor"),
            Err(CodeError::Nameplate("x".into()))
        );
        assert_eq!(
            Code::parse("7-lantern-harbour"),
            Err(CodeError::Word("harbour".into()))
        );
    }
}
