//! How long an SMS is, as the operator bills it: GSM-7 when every character
//! is in the GSM 03.38 alphabet (160 per message, 153 per part when split;
//! the extension characters take two), otherwise UCS-2 (70 per message, 67
//! per part, counted in UTF-16 units, so an emoji takes two). Cyrillic is
//! not GSM-7.

/// The GSM 03.38 basic alphabet.
const GSM_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the extension table: each takes an escape and itself.
const GSM_EXTENDED: &str = "^{}\\[~]|€\u{c}";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsLength {
    /// Characters as a person counts them.
    pub characters: usize,
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub units: usize,
    pub segments: usize,
}

pub fn measure(text: &str) -> SmsLength {
    let characters = text.chars().count();
    let gsm: Option<usize> = text
        .chars()
        .map(|c| {
            if GSM_BASIC.contains(c) {
                Some(1)
            } else if GSM_EXTENDED.contains(c) {
                Some(2)
            } else {
                None
            }
        })
        .sum();
    let (encoding, units, single, part) = match gsm {
        Some(septets) => (Encoding::Gsm7, septets, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(part)
    };
    SmsLength {
        characters,
        encoding,
        units,
        segments,
    }
}

impl std::fmt::Display for SmsLength {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let encoding = match self.encoding {
            Encoding::Gsm7 => "GSM-7",
            Encoding::Ucs2 => "UCS-2",
        };
        write!(
            f,
            "{} characters, {encoding}, {} segment{}",
            self.characters,
            self.segments,
            if self.segments == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latin_text_is_gsm7_160_then_153_per_part() {
        assert_eq!(measure(&"a".repeat(160)).segments, 1);
        assert_eq!(measure(&"a".repeat(161)).segments, 2);
        assert_eq!(measure(&"a".repeat(306)).segments, 2);
        assert_eq!(measure(&"a".repeat(307)).segments, 3);
        assert_eq!(measure("Hello").encoding, Encoding::Gsm7);
        // the extension characters take two septets
        let euro = measure(&"€".repeat(80));
        assert_eq!((euro.units, euro.segments), (160, 1));
        assert_eq!(measure(&"€".repeat(81)).segments, 2);
    }

    #[test]
    fn russian_and_kazakh_text_is_ucs2_70_then_67_per_part() {
        let ru = measure(&"Я".repeat(70));
        assert_eq!((ru.encoding, ru.segments), (Encoding::Ucs2, 1));
        assert_eq!(measure(&"Я".repeat(71)).segments, 2);
        assert_eq!(measure(&"Я".repeat(134)).segments, 2);
        assert_eq!(measure(&"Я".repeat(135)).segments, 3);
        // Kazakh letters outside Russian's alphabet
        let kk = measure("Сәлем! Нәтижеңіз дайын: ұ, ү, қ, ғ, ң, ө, һ, і");
        assert_eq!(kk.encoding, Encoding::Ucs2);
        assert_eq!(kk.segments, 1);
        // one Cyrillic letter turns a Latin text into UCS-2
        assert_eq!(measure(&format!("{}Я", "a".repeat(70))).segments, 2);
    }

    #[test]
    fn an_emoji_takes_two_units() {
        let e = measure(&"🙂".repeat(35));
        assert_eq!((e.characters, e.units, e.segments), (35, 70, 1));
        assert_eq!(measure(&"🙂".repeat(36)).segments, 2);
    }

    #[test]
    fn todays_sms_fits_two_segments() {
        let sms = "Тест пройден! Получите ваш продукт: https://academy.kz/product";
        let m = measure(sms);
        assert_eq!(m.encoding, Encoding::Ucs2);
        assert_eq!(m.segments, 1);
        assert_eq!(m.to_string(), "62 characters, UCS-2, 1 segment");
    }
}
