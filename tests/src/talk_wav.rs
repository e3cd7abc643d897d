//! What SIPp's callers say: a tone as a G.711 u-law WAV file.

use std::path::Path;

/// The callers' voice: 2 s of a 440 Hz tone at a speaking level, G.711 u-law in a WAV file
/// (what SIPp's rtp_stream plays).
pub fn write_talk_wav(path: &Path) {
    let samples: Vec<u8> = (0..16_000).map(|i| ulaw((4000.0 * (2.0 * std::f64::consts::PI * 440.0 * f64::from(i) / 8000.0).sin()) as i16)).collect();
    let mut wav = Vec::with_capacity(samples.len() + 58);
    let chunk = |wav: &mut Vec<u8>, id: &[u8], body: &[u8]| {
        wav.extend_from_slice(id);
        wav.extend_from_slice(&(body.len() as u32).to_le_bytes());
        wav.extend_from_slice(body);
    };
    // fmt: format 7 (u-law), mono, 8000 Hz, 8000 bytes/s, block 1, 8 bits, no extra bytes.
    let fmt: Vec<u8> = [7u16.to_le_bytes(), 1u16.to_le_bytes()]
        .concat()
        .into_iter()
        .chain(8000u32.to_le_bytes())
        .chain(8000u32.to_le_bytes())
        .chain(1u16.to_le_bytes())
        .chain(8u16.to_le_bytes())
        .chain(0u16.to_le_bytes())
        .collect();
    let mut body = b"WAVE".to_vec();
    chunk(&mut body, b"fmt ", &fmt);
    chunk(&mut body, b"data", &samples);
    chunk(&mut wav, b"RIFF", &body);
    std::fs::write(path, wav).unwrap();
}

/// G.711 u-law of one linear sample (ITU-T G.711: bias 0x84, segment and mantissa, inverted).
fn ulaw(sample: i16) -> u8 {
    let sign = if sample < 0 { 0x80 } else { 0 };
    let magnitude = (i32::from(sample).abs().min(32_635) + 0x84) as u32;
    let exponent = (31 - magnitude.leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (magnitude >> (exponent + 3)) & 0x0f;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}
