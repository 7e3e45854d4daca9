"""The words and cues around a name, for the name recognizer: vocabularies of words that look like names but
are not (or not always), titles and particles, the phrases that announce a person, and how a name's
words are tokenised. Tuning what counts as a name is mostly editing these lists."""

from __future__ import annotations

import re


def words(text: str) -> frozenset[str]:
    """A set of words written as one string: long vocabularies stay readable."""
    return frozenset(text.split())


# First names that are also everyday English words: found by comparing the census first names with an
# English word list, then pruned by hand of words that are mostly names (John, Peter, Victor…). As the
# first word of a name they need stronger evidence: a census surname after them, not at sentence start.
AMBIGUOUS_FIRST_NAMES = words(
    """alpha amber angel angle art august aura autumn basil beau belle berry bill birdie blanch bonny brain
    brandy brook brooks buck bud buddy buster candy caprice carol chance charity chase chastity cherish cherry
    clay clement cliff coral crystal dale dawn dean delta desire destiny diamond dimple dolly dot dusty earl
    earnest ebony echo else emery era ester eve faith fawn fern flora forest foster frank freeman gale
    garland garnet gay gene genie ginger glen glory grace grant guy harmony hazel heath heather holly honey
    hope hunter iris ivory ivy jack jade jasmine jasper jay jewel joy junior karma king lacy lady lance lane
    laurel liberty lily loan long lore magnolia major man manual maple mark marquis marry marvel mason max
    may melody mercy merry miles misty noble nova olive omega opal page pansy pat patience pearl penny piper
    porter precious prince princess prudence queen raven ray reed rich robin rocky rose rosemary royal ruby
    rusty sandy savanna scarlet sierra so sol son song soon spring star sterling stormy summer sun sunny
    sunshine tanner tiny trinity velvet viola violet wade walker ward will windy young"""
)
# Words that end an organisation or a place, not a person's name ("Grace Hospital", "Victoria Street"),
# unless they are also common surnames ("Rebecca Hall", "Linda Park").
NOT_A_NAME = words(
    """street st road rd avenue ave lane ln drive boulevard blvd court place square way terrace close
    crescent gardens parkway highway hospital clinic surgery pharmacy practice laboratory university college
    school academy bank group ltd limited inc corp gmbh ag sa llc llp plc foundation institute agency
    authority board council commission committee tribunal act regulation directive article recital chapter
    section annex treaty agreement convention union states state republic kingdom ministry department office
    centre center station airport port harbour harbor park river lake sea ocean bay valley coast beach
    island islands mountain hills heights bridge hall house palace castle abbey church cathedral museum
    gallery library stadium arena market mall plaza festival prize award fund trust partners associates
    holdings services solutions systems technologies medical health care insurance capital county city town
    village district province region wing ward block unit building tower floor room period day team support
    customer service club monday tuesday wednesday thursday friday saturday sunday january february march april
    june july august september october november december protection data privacy policy terms law code"""
)
# Capitalised words that are grammar, greetings or the first word of a place, never the start of a name.
NOT_A_NAME_WORD = words(
    """the this that these those in on at for from with by of and or but if when where what which who how
    why all any each our your their his her its we you they he she it i a an as to is are was were be has
    have had do does did not no yes please thanks thank dear hi hello regards kind best sir madam colleague
    colleagues customer customers team everyone there here after before since during according under
    pursuant my me mine san santa santo saint sao são los las fort mount new north south east west upper lower"""
)
TITLES = words("mr mrs ms miss mx dr prof professor sir dame lord lady judge rev reverend father")
# Kept as they are in a surrogate ("Ní Bhriain" → "Ní Hamm"): they say nothing about who it is.
PARTICLES = words(
    "van von de der den da di del della la le du dos das bin bint ibn al el ter ten ní nic ó ua"
)

NAME_TOKEN = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
# Words that announce a person. Strong cues (a greeting, a form label at the start of a line, a
# sign-off) make any capitalised words after them a name; weak ones (a role such as "my client", an
# introduction) need one of those words to be a census name too.
STRONG_CUE = re.compile(
    r"(?:\b(?:dear|hi|hello|attn\.?|c/o|next of kin|my name is|name is|full name)"
    r"|(?:^|\n|[.;][ \t])[ \t]*(?:name|patient|client|customer|applicant|employee|claimant|policyholder"
    r"|policy holder|account holder|cardholder|beneficiary|tenant|signed|from|to|cc|contact|prescriber"
    r"|physician|gp)[ \t]*:"
    r"|(?:regards|sincerely|faithfully|thanks|thank you|cheers|best wishes)(?:,[ \t]*|,?[ \t]*\n))[ \t]*$",
    re.IGNORECASE,
)
# Case-sensitive: a capitalised "Patient Directory" or "Customer Choice Notice" is a title, not a cue.
WEAK_CUE = re.compile(
    r"(?:\b(?:patient|client|customer|colleague|user|caller|agent|admin|applicant|claimant|witness|tenant"
    r"|employee|cardholder|account holder|daughter|son|wife|husband|mother|father|brother|sister|partner"
    r"|on behalf of|signed by|seen by|reviewed by|referred by|represent|represents|authori[sz]e)"
    r"|\b(?:[Tt]his is|I am|I,)|(?:^|\n)[^\n:]{1,30}:)[ \t]*$"
)
# Place names that are also census first names: as a first word they need the same care as "May".
PLACE_FIRST_NAMES = words(
    """florida georgia virginia carolina dakota montana nevada indiana austin dallas houston phoenix
    denver jackson madison lincoln victoria florence sydney adelaide charlotte paris chelsea israel
    jordan kenya china india asia africa america geneva"""
)
# Words that put a person right after them, whatever the words of the name (issue 15): a
# self-introduction, who filed or asked for something, on whose behalf. Case-insensitive, so "This is"
# opens a sentence too; what follows must still look like a name (CensusNameRecognizer._plausible):
# "I am Satisfied", "this is Article 17" and "on behalf of the Controller" are not.
PERSON_CUE = re.compile(
    r"\b(?:(?P<intro>i am|i'm|i’m|this is|it is|it's|it’s|my name is|my name's|name's|call me|i am called"
    r"|i'm called)"
    r"|(?P<by>(?:filed|submitted|requested|raised|reported|sent|signed|written|prepared|approved|authori[sz]ed"
    r"|opened|logged|created|entered|initiated|lodged|made|placed|booked|ordered|completed|countersigned"
    r"|witnessed|asked for|issued) by|assigned to|addressed to|attention of|on behalf of|in the name of"
    r"|c/o))[ \t]*:?[ \t]*$",
    re.IGNORECASE,
)
# Words right before a capitalised pair that make it a place or a thing, not a person ("in Puerto Rico",
# "the Comfort Plus plan", "using Mozilla Firefox").
THING_BEFORE = words(
    "the a an this these those our your their its in at near into onto inside across within via using"
)
OPENS_SENTENCE = re.compile(r"(?:^|[.!?:;\n\"“(])\s*$")
# The word after a name; in small letters it is mostly a verb ("Joy Tshabalala approved").
WORD_AFTER = re.compile(r"[ \t]+([^\W\d_]+)")
COUPLE_BEFORE = re.compile(r"(?<![\w])([^\W\d_]+)[ \t]+(?:and|&)[ \t]+$")
GIVEN_AFTER_COMMA = re.compile(r",[ \t]*([^\W\d_]+(?:-[^\W\d_]+)?)")


def is_name_shaped(token: str) -> bool:
    """A capital then small letters, in each part of a hyphenated or apostrophed name ("Ní", "Yılmaz",
    "O'Brien", "Opoku-Agyemang", "McCarthy"); not "GDPR", "iPhone", "KwaZulu" or "LVADs"."""
    parts = re.split(r"[-'’]", token)
    for i, part in enumerate(parts):
        rest = part[3:] if part[:3] in ("Mac", "Mc") and len(part) > 3 else part[1:]
        rest = part[2:] if part[:2] == "Mc" and len(part) > 2 else rest
        if (
            not part
            or not (part[0].isupper() or (i > 0 and part.islower()))
            or any(c.isupper() for c in rest)
        ):
            return False
    return True


def is_org_word(token: str) -> bool:
    low = token.lower()
    return low in NOT_A_NAME or (low.endswith("s") and low[:-1] in NOT_A_NAME)


def is_capitalised(token: str) -> bool:
    """True for "Anna", "McDonald", "O'Brien", "J"; false for "GDPR", "data"."""
    return token[0].isupper() and not token[1:].isupper()
