"""PT-BR inverse text normalisation (ITN): spoken numbers written the way a Brazilian reader
expects.

Opt-in (`MergeRequest.inverse_text_normalization`, `asr transcribe --itn`); off by default. Pure.

What is rewritten (the spoken form is recognised with or without accents' plain variants such as
"tres", "milhao"; a word's leading/trailing punctuation is kept around the written form):

==============================================  ==========================================
spoken                                          written
==============================================  ==========================================
mil duzentos e cinquenta reais                  R$ 1.250,00
dez reais e cinquenta centavos                  R$ 10,50
cinquenta centavos / um real e cinquenta         R$ 0,50 / R$ 1,50
dois milhões de reais / vinte dólares           R$ 2 milhões / US$ 20,00
doze por cento / três vírgula cinco por cento   12% / 3,5%
vinte e um de março de dois mil e vinte e       21 de março de 2024
quatro / primeiro de maio / no dia dois         1º de maio / no dia 2
em mil novecentos e noventa e oito              em 1998
às duas e quinze / duas e quatro horas da       às 2h15 / 14h04 / às 15h / 23h30
tarde / às quinze horas / onze e meia da noite
às quinze para as três / das oito às dezoito    às 2h45 / das 8h às 18h
horas
dez quilômetros / um metro e oitenta /          10 km / 1,80 m / 120 km/h
cento e vinte quilômetros por hora
(telefone) nove nove oito sete seis cinco       99876-5432 / (11) 98765-4321 /
quatro três dois / onze nove oito... / (CPF)    123.456.789-00 / 01310-100
um dois três ... / (CEP) zero um três...
vigésimo primeiro / trigésima segunda           21º / 32ª
cento e vinte e três mil quatrocentos e         123.456 / 2 milhões / 3,5
cinquenta e seis / dois milhões / três
vírgula cinco
==============================================  ==========================================

Style choices (Manual da Redação, Folha de S.Paulo; the usual Brazilian press style): a plain
cardinal or ordinal from zero to ten stays in words ("três anos", "um irmão": "um"/"uma" are mostly
articles, and "segundo"/"quarto" mostly not ordinals), larger ones become digits with a dot every
three digits ("1.250"); a round count of millions keeps its word ("2 milhões"); years (after a
month or "em"/"ano") have no dot. Money, percentages, days of the month and clock times always use
digits, and so do measures with a metric unit (km, m, cm, mm, kg, g, ml, km/h: "3 km", always with
the symbol; "metros quadrados" and litres keep their words). Digits said one by one become a digit
string when there are five or more, or three or more after a word such as "telefone", "CEP", "CPF",
"senha", "ramal" (`_DIGIT_CONTEXT`); "meia" is six inside them, "ponto" and "traço" are dropped and
a comma between groups does not end them; phones, CEP and CPF get their usual layout. A bare "mil"
before "desculpas"/"vezes" is hyperbole and stays. A time needs a clear marker (a period of the day
such as "da tarde", or "às"/"à" followed by "horas" or minutes; "M para as H"; the start of "das H
às H' horas"), because "duas horas" alone is usually a duration; "da tarde" and "da noite" move the
hour to the 24-hour clock ("duas da tarde" → "14h").

Words and timings: each rewritten span of words becomes **one** word whose text is the written
form, whose start/end are the span's first start and last end, whose probability is the lowest of
the span (a number is as uncertain as its least certain word) and whose speaker is the span's (a
span never crosses a segment, so never a speaker change). Untouched words are kept verbatim. So
the invariants of the merge hold after ITN (segment text = its words joined by single spaces,
words in time order, one speaker per segment) and subtitles never break a written number or
amount across lines or cues ("R$ 1.250,00" is one unbreakable word). A written word may therefore
contain a space ("R$ 1.250,00", "2 milhões"). Unchanged digits are left alone ("1.250" stays, but
"1.250 reais" becomes "R$ 1.250,00"), so Whisper output that already has digits is safe.

Library choice (measured: docs/itn.md, `benchmarks/bench_itn.py` on the 314-sentence labelled set
`benchmarks/itn/ptbr_itn.tsv`). `text2num` 3.1 (`alpha2digit(text, "pt")`) parses Portuguese
numbers correctly (it agrees with num2words on thousands of values once num2words' commas are
removed) but works on whole strings and returns no spans, so a rewritten number could not be tied
back to its words' timings; its output is not Brazilian written style either ("doze por cento" →
"12 por 100", no thousands dots, no money, no 24-hour times). NVIDIA's `nemo_text_processing` 1.2.0
has Portuguese ITN grammars and runs here (pynini 2.1.6.post1 cp311 wheel, ~160 MB; grammar
compiled in ~2.5 s, then cached); but it returns no spans either and its style is not Brazilian
press style ("R$ 1250", "12 %", "14:15"). Aligned back to the words and restyled
(`benchmarks/itn_nemo.py`) it scored 88.0% exact on the held-out part against 94.0% for this
module, and using it where this module wrote nothing changed no held-out sentence; so the grammar
is this small module, with no dependency: its number vocabulary is checked against `num2words(n,
lang="pt_BR")` (the reverse direction, already a test dependency) by a round-trip property test
over 0 … 10¹⁵ and ordinals 1 … 1999.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from asr_mesh.services.common.domain import Segment, Word

# ---- vocabulary ---------------------------------------------------------------------------------

_UNITS = {
    "zero": 0,
    "um": 1,
    "uma": 1,
    "dois": 2,
    "duas": 2,
    "três": 3,
    "tres": 3,
    "quatro": 4,
    "cinco": 5,
    "seis": 6,
    "sete": 7,
    "oito": 8,
    "nove": 9,
}
_TEENS = {
    "dez": 10,
    "onze": 11,
    "doze": 12,
    "treze": 13,
    "catorze": 14,
    "quatorze": 14,
    "quinze": 15,
    "dezesseis": 16,
    "dezasseis": 16,
    "dezessete": 17,
    "dezassete": 17,
    "dezoito": 18,
    "dezenove": 19,
    "dezanove": 19,
}
_TENS = {
    "vinte": 20,
    "trinta": 30,
    "quarenta": 40,
    "cinquenta": 50,
    "cinqüenta": 50,
    "sessenta": 60,
    "setenta": 70,
    "oitenta": 80,
    "noventa": 90,
}
_HUNDREDS = {"cem": 100, "cento": 100}
for _stem, _value in (
    ("duzent", 200),
    ("trezent", 300),
    ("quatrocent", 400),
    ("quinhent", 500),
    ("seiscent", 600),
    ("setecent", 700),
    ("oitocent", 800),
    ("novecent", 900),
):
    _HUNDREDS[_stem + "os"] = _HUNDREDS[_stem + "as"] = _value
_SCALES = {"mil": 10**3}
for _stem, _value in (("milh", 10**6), ("bilh", 10**9), ("trilh", 10**12), ("quatrilh", 10**15)):
    for _end in ("ão", "ões", "ao", "oes"):
        _SCALES[_stem + _end] = _value

_ORDINALS: dict[str, int] = {}
for _value, _stems in {
    1: ["primeir"],
    2: ["segund"],
    3: ["terceir"],
    4: ["quart"],
    5: ["quint"],
    6: ["sext"],
    7: ["sétim", "setim"],
    8: ["oitav"],
    9: ["non"],
    10: ["décim", "decim"],
    20: ["vigésim", "vigesim"],
    30: ["trigésim", "trigesim"],
    40: ["quadragésim"],
    50: ["quinquagésim", "qüinquagésim"],
    60: ["sexagésim"],
    70: ["septuagésim", "setuagésim"],
    80: ["octogésim"],
    90: ["nonagésim"],
    100: ["centésim", "centesim"],
    200: ["ducentésim"],
    300: ["trecentésim", "tricentésim"],
    400: ["quadringentésim", "quadrigentésim"],
    500: ["quingentésim"],
    600: ["sexcentésim", "seiscentésim"],
    700: ["septingentésim", "setingentésim", "septigentésim"],
    800: ["octingentésim", "octigentésim"],
    900: ["nongentésim", "noningentésim"],
    1000: ["milésim", "milesim"],
}.items():
    for _stem in _stems:
        for _end in ("o", "a", "os", "as"):
            _ORDINALS[_stem + _end] = _value

_CURRENCIES = {
    "real": "R$",
    "reais": "R$",
    "dólar": "US$",
    "dólares": "US$",
    "dolar": "US$",
    "dolares": "US$",
    "euro": "€",
    "euros": "€",
}
_CENTS = {"centavo", "centavos"}
_MONTHS = {
    "janeiro",
    "fevereiro",
    "março",
    "abril",
    "maio",
    "junho",
    "julho",
    "agosto",
    "setembro",
    "outubro",
    "novembro",
    "dezembro",
}
_HOUR_WORDS = {"hora", "horas", "h"}
_MINUTE_WORDS = {"minuto", "minutos", "min"}
_PERIODS = {"manhã": 0, "madrugada": 0, "tarde": 12, "noite": 12}
_TIME_PREPOSITIONS = {"às", "à", "pelas", "pela"}
_YEAR_CONTEXT = {"em", "ano", "anos", "desde"}
_MEASURES = {}
for _words, _symbol in (
    (("quilômetro", "quilometro"), "km"),
    (("quilo", "quilograma"), "kg"),
    (("grama",), "g"),
    (("metro",), "m"),
    (("centímetro", "centimetro"), "cm"),
    (("milímetro", "milimetro"), "mm"),
    (("mililitro",), "ml"),
):
    for _word in _words:
        _MEASURES[_word] = _MEASURES[_word + "s"] = _symbol
_AREA_VOLUME = {"quadrado", "quadrados", "cúbico", "cúbicos", "cubico", "cubicos"}
_DIGIT_WORDS = {
    "zero": "0",
    "um": "1",
    "dois": "2",
    "três": "3",
    "tres": "3",
    "quatro": "4",
    "cinco": "5",
    "seis": "6",
    "meia": "6",
    "sete": "7",
    "oito": "8",
    "nove": "9",
}
"""Digits said one by one ("meia" is six inside a phone number: "nove meia meia...")."""
_DIGIT_SEPARATORS = {"ponto", "traço", "traco", "hífen", "hifen"}
_PHONE_CONTEXT = {
    "telefone",
    "fone",
    "celular",
    "whatsapp",
    "zap",
    "ligue",
    "liga",
    "ligar",
    "disque",
    "disca",
    "discar",
    "contato",
}
_DIGIT_CONTEXT = _PHONE_CONTEXT | {
    "número",
    "numero",
    "ramal",
    "código",
    "codigo",
    "senha",
    "protocolo",
    "conta",
    "agência",
    "agencia",
    "cep",
    "cpf",
    "cnpj",
    "rg",
    "apartamento",
    "pin",
}
_NOT_A_COUNT_AFTER_MIL = {"desculpas", "perdões", "perdoes", "vezes", "maravilhas"}
"""A bare "mil" before these is hyperbole ("mil desculpas"), not a thousand."""
_BARE_DIGITS_ABOVE = 10
"""Plain cardinals and ordinals up to this stay in words (press style)."""

_LEAD = "\"'“‘«([¿¡"
_TRAIL = ".,;:!?…\"'”’»)]"
_SPLIT = re.compile(rf"^([{re.escape(_LEAD)}]*)(.*?)([{re.escape(_TRAIL)}]*)$", re.S)
_DIGITS = re.compile(r"^(\d{1,3}(?:\.\d{3})+|\d+)(?:,(\d+))?$")


@dataclass(frozen=True)
class Number:
    """A parsed amount: integer part, decimal digits as spoken, and a kept scale word."""

    whole: int
    decimals: str = ""
    scale_word: str = ""
    """"milhões" in "2 milhões": a round count of a big scale keeps its word."""
    digits: bool = False
    """Written with digits already (by the recogniser)."""

    @property
    def is_integer(self) -> bool:
        return not self.decimals and not self.scale_word


@dataclass(frozen=True)
class Rewrite:
    """Tokens [start, end) are written as `text`."""

    start: int
    end: int
    text: str


def group_thousands(n: int) -> str:
    """1250 → "1.250" (the Brazilian thousands separator)."""
    return f"{n:,}".replace(",", ".")


def format_number(num: Number, *, year: bool = False) -> str:
    """A Number as Brazilian digits: "1.250", "3,5", "2 milhões", "2,5 milhões"; years undotted."""
    whole = str(num.whole) if year else group_thousands(num.whole)
    text = f"{whole},{num.decimals}" if num.decimals else whole
    return f"{text} {num.scale_word}" if num.scale_word else text


def format_money(symbol: str, num: Number, cents: int | None = None) -> str:
    """ "R$ 1.250,00"; a round count of millions stays spoken-like ("R$ 2 milhões")."""
    if num.scale_word:
        return f"{symbol} {format_number(num)}"
    if cents is None:
        cents_text = (num.decimals + "00")[:2] if len(num.decimals) <= 2 else num.decimals
    else:
        cents_text = f"{cents:02d}"
    return f"{symbol} {group_thousands(num.whole)},{cents_text}"


# ---- the parser over one run of tokens ----------------------------------------------------------


class _Tokens:
    """The words of one segment split into (lead, core, trail); `core` lower-cased for matching."""

    def __init__(self, words: Sequence[str]):
        self.lead, self.core, self.trail = [], [], []
        for word in words:
            # only punctuation: kept whole (as the core), it never matches anything
            lead, core, trail = split_punctuation(word)
            self.lead.append(lead)
            self.core.append(core.lower())
            self.trail.append(trail)
        self.n = len(words)

    def at(self, i: int) -> str:
        return self.core[i] if 0 <= i < self.n else ""

    def linked(self, i: int) -> bool:
        """Token i and i+1 may belong to one expression (no punctuation between them)."""
        return i + 1 < self.n and not self.trail[i] and not self.lead[i + 1]

    def word_at(self, i: int, words: set[str] | dict[str, Any]) -> bool:
        """Token i is one of `words` and linked to the token before it."""
        return self.at(i) in words and self.linked(i - 1)

    # -- cardinals --

    def _and(self, i: int) -> int | None:
        """Index after an "e" at i that joins i-1 and i+1, else None."""
        if self.at(i) == "e" and self.linked(i - 1) and self.linked(i):
            return i + 1
        return None

    def _tens(self, i: int) -> tuple[int, int] | None:
        """1 … 99 at i: (value, end)."""
        word = self.at(i)
        if word in _TENS:
            k = self._and(i + 1)
            if k is not None and _UNITS.get(self.at(k), 0) > 0:
                return _TENS[word] + _UNITS[self.at(k)], k + 1
            return _TENS[word], i + 1
        if word in _TEENS:
            return _TEENS[word], i + 1
        if _UNITS.get(word, 0) > 0:
            return _UNITS[word], i + 1
        return None

    def _group(self, i: int) -> tuple[int, int] | None:
        """1 … 999 at i: (value, end). "cem" stands alone, "cento" needs "e" and more."""
        word = self.at(i)
        if word not in _HUNDREDS:
            return self._tens(i)
        if word == "cem":
            return 100, i + 1
        k = self._and(i + 1)
        rest = self._tens(k) if k is not None else None
        if rest:
            return _HUNDREDS[word] + rest[0], rest[1]
        return None if word == "cento" else (_HUNDREDS[word], i + 1)

    def cardinal(self, i: int) -> tuple[int, int, str] | None:
        """The longest cardinal at i: (value, end, kept scale word for "2 milhões" or "")."""
        if self.at(i) == "zero":
            return 0, i + 1, ""
        total, j, last_scale, end = 0, i, math.inf, i
        parts: list[tuple[int, str]] = []  # (group, scale word) per scale step
        while True:
            group = self._group(j)
            k = group[1] if group else j
            scale_word = self.at(k)
            scale = _SCALES.get(scale_word, 0)
            joins = group is None or self.linked(k - 1)
            if joins and scale and scale < last_scale and (group or scale_word == "mil"):
                value = group[0] if group else 1
                total += value * scale
                last_scale, end = scale, k + 1
                parts.append((value, scale_word))
                nxt = self._continue(end)
                if nxt is None:
                    break
                j = nxt
                continue
            if group:
                total, end = total + group[0], k
                parts.append((group[0], ""))
            break
        if not parts:
            return None
        kept = ""
        if len(parts) == 1 and parts[0][1] and _SCALES[parts[0][1]] >= 10**6:
            kept = parts[0][1]
        return total, end, kept

    def _continue(self, i: int) -> int | None:
        """Where the next group of a number may start after a scale word ending at i-1."""
        if i >= self.n:
            return None
        if self.linked(i - 1):
            return i + 1 if self.at(i) == "e" and self.linked(i) else i
        # num2words writes "mil, cento e um": a comma after a scale word does not end the number.
        if self.trail[i - 1] == "," and not self.lead[i] and self.at(i - 1) in _SCALES:
            return i
        return None

    def number(self, i: int) -> tuple[Number, int] | None:
        """Cardinal with optional "vírgula" decimals (and a big scale after them), or digits."""
        match = _DIGITS.match(self.at(i))
        if match:
            whole = int(match.group(1).replace(".", ""))
            return Number(whole, match.group(2) or "", digits=True), i + 1
        parsed = self.cardinal(i)
        if parsed is None:
            return None
        whole, end, kept = parsed
        if kept or not self.word_at(end, {"vírgula", "virgula"}):
            return Number(whole // _SCALES[kept] if kept else whole, scale_word=kept), end
        # Decimals as spoken: "três vírgula zero cinco" → 3,05; "dois vírgula cinco milhões".
        decimals, j = "", end + 1
        while self.at(j) == "zero" and self.linked(j - 1):
            decimals, j = decimals + "0", j + 1
        frac = self.cardinal(j) if self.linked(j - 1) else None
        if frac and frac[0] > 0 and (frac[2] or frac[0] < 10**6):
            scale = _SCALES[frac[2]] if frac[2] else 1
            return Number(whole, decimals + str(frac[0] // scale), frac[2]), frac[1]
        if decimals:
            return Number(whole, decimals), j
        return Number(whole), end

    def ordinal(self, i: int) -> tuple[int, int, str] | None:
        """Ordinal words of falling rank ("vigésimo primeiro"): (value, end, "º" or "ª")."""
        total, j, last = 0, i, math.inf
        while (j == i or self.linked(j - 1)) and self.at(j) in _ORDINALS:
            value = _ORDINALS[self.at(j)]
            rank = 10 ** (len(str(value)) - 1)
            if rank >= last:
                break
            total, last, j = total + value, rank, j + 1
        if j == i:
            return None
        return total, j, "ª" if self.at(j - 1).rstrip("s").endswith("a") else "º"

    # -- expressions --

    def period(self, i: int) -> tuple[int, int] | None:
        """ "da tarde" at i: (hours to add, end)."""
        if self.at(i) in ("da", "de") and self.linked(i - 1) and self.word_at(i + 1, _PERIODS):
            return _PERIODS[self.at(i + 1)], i + 2
        return None

    def time(self, i: int) -> tuple[str, int] | None:
        """A clock time at i, if clearly one (see module docstring): ("14h30", end)."""
        hour = self.cardinal(i)
        if hour is None or hour[2] or not 0 <= hour[0] <= 24:
            return None
        h, j = hour[0], hour[1]
        minutes, hour_word = 0, False
        if self.word_at(j, _HOUR_WORDS):
            hour_word, j = True, j + 1
        k = self._and(j)
        if k is not None:
            if self.at(k) == "meia":
                minutes, j = 30, k + 1
            else:
                m = self._tens(k)
                if m and m[0] < 60:
                    minutes, j = m
                    if self.word_at(j, _MINUTE_WORDS):
                        j += 1
            if minutes and not hour_word and self.word_at(j, _HOUR_WORDS):
                hour_word, j = True, j + 1
        period = self.period(j)
        before = self.at(i - 1) if self.linked(i - 1) else ""
        at_prep = before in _TIME_PREPOSITIONS or (
            before in ("as", "das")
            and self.at(i - 2) in ("até", "partir", "antes", "depois")
            and self.linked(i - 2)
        )
        # "das oito às dezoito horas": the start of a range whose end is a clear clock time.
        range_start = (
            before == "das"
            and not period
            and self.word_at(j, {"às", "as", "a"})
            and self.linked(j)
            and self.time(j + 1) is not None
        )
        if not (period or range_start or (at_prep and (hour_word or minutes))):
            return None
        if period:
            shift, j = period
            if shift and (h < 12 and (self.at(j - 1) == "tarde" or h >= 6)):
                h += shift
        return f"{h}h{minutes:02d}" if minutes else f"{h}h", j

    def to_the_hour(self, i: int) -> tuple[str, int] | None:
        """ "às quinze para as três", "dez para as oito da noite", "vinte para o meio-dia"."""
        m = self._tens(i)
        if m is None or not 1 <= m[0] < 60:
            return None
        j = m[1]
        if self.word_at(j, _MINUTE_WORDS):
            j += 1
        if not self.word_at(j, {"para", "pras", "pra"}):
            return None
        j += 1
        if self.at(j - 1) != "pras" and self.word_at(j, {"as", "às", "a", "à", "o"}):
            j += 1
        if not self.linked(j - 1):
            return None
        if self.at(j) in ("meio-dia", "meia-noite"):
            h, j = (12 if self.at(j) == "meio-dia" else 24), j + 1
        elif self.at(j) in ("meio", "meia") and self.word_at(j + 1, {"dia", "noite"}):
            h, j = (12 if self.at(j) == "meio" else 24), j + 2
        else:
            hour = self.cardinal(j)
            if hour is None or hour[2] or not 1 <= hour[0] <= 12:
                return None
            h, j = hour[0], hour[1]
            hour_word = self.word_at(j, _HOUR_WORDS)
            if hour_word:
                j += 1
            period = self.period(j)
            if period:
                if period[0] and (h < 12 and (self.at(period[1] - 1) == "tarde" or h >= 6)):
                    h += period[0]
                j = period[1]
            # "dei dez para as duas crianças" is not 1h50: a plain hour needs "às" before it,
            # "horas" or a period of the day after it (midday and midnight are clear by themselves).
            at_prep = self.at(i - 1) in _TIME_PREPOSITIONS and self.linked(i - 1)
            if not (at_prep or hour_word or period):
                return None
        h = (h - 1) % 24
        return f"{h}h{60 - m[0]:02d}", j

    def digit_string(self, i: int) -> tuple[str, int] | None:
        """Digits said one by one (phones, CEP, CPF, codes): ("99876-5432", end).

        Five or more digits, or three or more after a word such as "telefone", "CEP", "senha";
        an area code or CEP prefix may be said as one number ("onze nove oito..."), and
        "ponto"/"traço" between digits are dropped (the format is rebuilt from the context).
        """
        context = {self.core[k] for k in range(max(0, i - 4), i)}
        lead, j = "", i
        group = self._tens(i)
        if group and group[0] >= 11 and self.linked(group[1] - 1):
            lead, j = str(group[0]), group[1]
        digits, group_len = "", 0
        while j < self.n:
            word = self.at(j)
            # Groups may be said with a pause Whisper writes as a comma: "três três quatro
            # quatro, cinco cinco seis seis" (a group of two digits or more before the comma).
            comma = (
                j > i
                and self.trail[j - 1] == ","
                and not self.lead[j]
                and group_len >= 2
                and word in _DIGIT_WORDS
            )
            if not (j == i or self.linked(j - 1) or comma):
                break
            if comma:
                group_len = 0
            if word in _DIGIT_WORDS and (digits or lead or word != "meia"):
                digits, j, group_len = digits + _DIGIT_WORDS[word], j + 1, group_len + 1
            elif (
                word in _DIGIT_SEPARATORS
                and digits
                and self.at(j + 1) in _DIGIT_WORDS
                and self.linked(j)
            ):
                j += 1
            else:
                break
        if lead and len(digits) < 6:
            return None
        if len(digits) < (3 if context & _DIGIT_CONTEXT else 5):
            return None
        return _format_digits(lead + digits, context), j

    def _numeric_at(self, i: int) -> bool:
        """Token i continues a number (a scale, a currency, "vírgula"...) and is linked to i-1."""
        return self.linked(i - 1) and (
            self.at(i) in _SCALES
            or self.at(i) in _CURRENCIES
            or self.at(i) in _CENTS
            or self.at(i) in ("vírgula", "virgula", "por", "porcento")
            or self.at(i) in _MEASURES
        )

    def _measure(self, num: Number, end: int) -> tuple[str, int] | None:
        """ "dez quilômetros" → "10 km"; "um metro e oitenta" → "1,80 m"; "um quilo e meio"."""
        if not self.word_at(end, _MEASURES) or self.word_at(end + 1, _AREA_VOLUME):
            return None
        symbol, j = _MEASURES[self.at(end)], end + 1
        if symbol == "km" and self.word_at(j, {"por"}) and self.word_at(j + 1, {"hora"}):
            symbol, j = "km/h", j + 2
        text = format_number(num)
        k = self._and(j) if num.is_integer else None
        if k is not None and self.at(k) in ("meio", "meia"):
            text, j = f"{group_thousands(num.whole)},5", k + 1
        elif k is not None and symbol == "m":
            cm = self._tens(k)
            if cm and cm[0] >= 10 and not self._numeric_at(cm[1]):
                text, j = f"{group_thousands(num.whole)},{cm[0]:02d}", cm[1]
        return f"{text} {symbol}", j

    def rewrites(self) -> list[Rewrite]:
        """Every rewrite, left to right, non-overlapping."""
        out: list[Rewrite] = []
        i = 0
        while i < self.n:
            found = self._at(i)
            if found:
                out += found
                i = found[-1].end
            else:
                i += 1
        return out

    def _at(self, i: int) -> list[Rewrite] | None:
        prev = self.at(i - 1) if self.linked(i - 1) else ""
        digits = self.digit_string(i)
        if digits:
            return [Rewrite(i, digits[1], digits[0])]
        clock = self.to_the_hour(i) or self.time(i)
        if clock:
            return [Rewrite(i, clock[1], clock[0])]
        parsed = self.number(i)
        if parsed is None:
            ordinal = self.ordinal(i)
            if ordinal is None:
                return None
            value, end, sign = ordinal
            if value == 1 and (self._month_at(end) or prev == "dia"):
                return [Rewrite(i, end, "1º")]
            return [Rewrite(i, end, f"{value}{sign}")] if value > _BARE_DIGITS_ABOVE else None
        num, end = parsed
        money = self._money(num, end)
        if money:
            return [Rewrite(i, money[1], money[0])]
        if self.word_at(end, {"por"}) and self.word_at(end + 1, {"cento"}):
            return [Rewrite(i, end + 2, format_number(num) + "%")]
        if self.word_at(end, {"porcento"}):
            return [Rewrite(i, end + 1, format_number(num) + "%")]
        measure = self._measure(num, end)
        if measure:
            return [Rewrite(i, measure[1], measure[0])]
        if end == i + 1 and self.at(i) == "mil" and self.word_at(end, _NOT_A_COUNT_AFTER_MIL):
            return None
        if self.word_at(end, _CENTS) and num.is_integer and 0 < num.whole < 100:
            return [Rewrite(i, end + 1, f"R$ 0,{num.whole:02d}")]
        day = num.is_integer and 1 <= num.whole <= 31
        if day and self._month_at(end):
            text = "1º" if num.whole == 1 else str(num.whole)
            return [Rewrite(i, end, text)] if not num.digits or text != self.core[i] else None
        if day and prev == "dia":
            written = "1º" if num.whole == 1 else str(num.whole)
            return None if num.digits else [Rewrite(i, end, written)]
        if num.digits:
            return None
        # "em 1998", "no ano 2000", "março de 2024": years are written without the dot.
        after_month = prev == "de" and self.at(i - 2) in _MONTHS and self.linked(i - 2)
        from_year = prev == "de" and self.at(i - 2) == "partir" and self.linked(i - 2)
        year = (
            num.is_integer
            and 0 < num.whole <= 2199
            and (after_month or ((prev in _YEAR_CONTEXT or from_year) and num.whole >= 1000))
        )
        if year or not num.is_integer or num.whole > _BARE_DIGITS_ABOVE:
            return [Rewrite(i, end, format_number(num, year=year))]
        return None

    def _month_at(self, i: int) -> bool:
        return self.word_at(i, {"de"}) and self.word_at(i + 1, _MONTHS)

    def _money(self, num: Number, end: int) -> tuple[str, int] | None:
        j = end
        if num.scale_word and self.word_at(j, {"de"}):
            j += 1
        if not self.word_at(j, _CURRENCIES):
            return None
        symbol, j = _CURRENCIES[self.at(j)], j + 1
        k = self._and(j) if num.is_integer else None
        if k is None and num.is_integer and self.word_at(j, {"com"}) and self.linked(j):
            k = j + 1
        if k is not None:
            cents = self._tens(k)
            if cents and self.word_at(cents[1], _CENTS):
                return format_money(symbol, num, cents[0]), cents[1] + 1
            # "um real e cinquenta", "oitenta reais com cinquenta": cents without the word, when
            # they are two-digit and nothing numeric follows.
            if cents and cents[0] >= 10 and not self._numeric_at(cents[1]):
                return format_money(symbol, num, cents[0]), cents[1]
        return format_money(symbol, num), j


def _format_digits(digits: str, context: set[str]) -> str:
    """Brazilian layouts: CPF 123.456.789-00, CEP 01310-100, phones 3214-5678 / (11) 98765-4321."""
    n = len(digits)
    if "cpf" in context and n == 11:
        return f"{digits[:3]}.{digits[3:6]}.{digits[6:9]}-{digits[9:]}"
    if "cep" in context and n == 8:
        return f"{digits[:5]}-{digits[5:]}"
    if context & (_DIGIT_CONTEXT - _PHONE_CONTEXT - {"número", "numero"}):
        return digits  # codes, passwords, accounts: as said
    if n == 8:
        return f"{digits[:4]}-{digits[4:]}"
    if n == 9 and digits[0] == "9":
        return f"{digits[:5]}-{digits[5:]}"
    if n in (10, 11) and digits[0] != "0":
        return f"({digits[:2]}) {digits[2:-4]}-{digits[-4:]}"
    return digits


def rewrites(words: Sequence[str]) -> list[Rewrite]:
    """The rewrites ITN makes in a run of words (token indexes, written text without
    punctuation)."""
    return _Tokens(words).rewrites()


Rewriter = Callable[[Sequence[str]], list[Rewrite]]
"""A backend: the words of one segment → the spans to write (builtin `rewrites`;
`benchmarks/itn_nemo.py` for NeMo)."""


def split_punctuation(word: str) -> tuple[str, str, str]:
    """A word as (leading punctuation, core, trailing punctuation), the way ITN sees it."""
    match = _SPLIT.match(word)
    assert match is not None  # the pattern matches every string
    lead, core, trail = match.groups()
    return ("", word, "") if not core else (lead, core, trail)


def _written(tokens: _Tokens, rw: Rewrite) -> str:
    # The first word's leading and the last word's trailing punctuation survive the rewrite.
    return tokens.lead[rw.start] + rw.text + tokens.trail[rw.end - 1]


def normalize_text(text: str, rewriter: Rewriter = rewrites) -> str:
    """ITN of free text (segments without word timings); whitespace collapses to single spaces."""
    words = text.split()
    tokens = _Tokens(words)
    out: list[str] = []
    i = 0
    for rw in rewriter(words):
        out += words[i : rw.start]
        out.append(_written(tokens, rw))
        i = rw.end
    out += words[i:]
    return " ".join(out)


def normalize_words(words: Sequence[Word], rewriter: Rewriter = rewrites) -> tuple[Word, ...]:
    """ITN of timed words: each rewritten span becomes one word (see module docstring)."""
    texts = [w.word for w in words]
    tokens = _Tokens(texts)
    out: list[Word] = []
    i = 0
    for rw in rewriter(texts):
        out += words[i : rw.start]
        span = words[rw.start : rw.end]
        out.append(
            Word(
                start=span[0].start,
                end=max(w.end for w in span),
                word=_written(tokens, rw),
                probability=min(w.probability for w in span),
                speaker=span[0].speaker,
            )
        )
        i = rw.end
    out += words[i:]
    return tuple(out)


def normalize_segment(segment: Segment, rewriter: Rewriter = rewrites) -> Segment:
    """ITN of one segment: its words (spans merged) and its text (the words joined again)."""
    if not segment.words:
        return replace(segment, text=normalize_text(segment.text, rewriter))
    words = normalize_words(segment.words, rewriter)
    if len(words) == len(segment.words) and all(a is b for a, b in zip(words, segment.words)):
        return segment
    return replace(segment, words=words, text=" ".join(w.word for w in words))


def normalize_segments(
    segments: Sequence[Segment], rewriter: Rewriter = rewrites
) -> tuple[Segment, ...]:
    """ITN of every segment; a span never crosses a segment boundary."""
    return tuple(normalize_segment(s, rewriter) for s in segments)


def parse_cardinal(text: str) -> int | None:
    """The value of `text` if all of it is one spoken cardinal ("mil e um" → 1001), else None."""
    tokens = _Tokens(text.split())
    parsed = tokens.cardinal(0) if tokens.n else None
    return parsed[0] if parsed and parsed[1] == tokens.n else None


def parse_ordinal(text: str) -> int | None:
    """The value of `text` if all of it is one spoken ordinal ("vigésimo primeiro" → 21)."""
    tokens = _Tokens(text.split())
    parsed = tokens.ordinal(0) if tokens.n else None
    return parsed[0] if parsed and parsed[1] == tokens.n else None
