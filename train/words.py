"""Word lists the stories generator draws from, and the words made from them: the copy games' and
canaries' alphabet (copy_words) and the made-up names of bursty stories (made_up_word). Kept apart
from the plots so that the generator reads as plots, and so the vocabulary (well over 1,000
distinct words) is easy to audit."""
from __future__ import annotations

from functools import lru_cache

from model.tokenizer import gpt2_encoding

GIRLS = """Lily Mia Emma Zoe Anna Lucy Ella Sara Nina Rosa Maya Ruby Ivy Chloe Grace Hannah Julia Kate
Lena Molly Nora Olive Paula Rita Sophie Tara Una Vera Wendy Alice Bella Clara Daisy Eva Fiona Hazel
Iris Jane Kira Luna Mara Nell Opal Penny Quinn Rose Sally Tess Uma Violet Willa Amy Beth Cora Dora
Gina Holly Jenny Lola Mina Polly""".split()

BOYS = """Tom Ben Sam Max Leo Jack Finn Noah Luke Owen Paul Ryan Theo Adam Eli Hugo Ivan Jake Kai Liam
Milo Nick Oscar Pete Rudy Sid Toby Vince Will Zack Alex Bob Carl Dan Evan Fred Gus Hank Jim Ken Lou
Matt Ned Otto Rex Ted Ari Bo Cole Dev Ethan George Henry Isaac Joe Kevin Levi Mark Nate Oliver""".split()

PET_NAMES = """Pip Dot Bunny Fluff Sunny Patch Biscuit Pepper Coco Muffin Nibbles Socks Button Ginger
Maple Pebble Shadow Sparky Whiskers Buddy Rusty Snowy Tiny Bubbles Cookie Honey Jelly Peanut Pickles
Ziggy Taffy Mittens Noodle Sprout Tulip Waffles Bean Fudge Clover Dusty""".split()

ANIMALS = """cat dog rabbit bear fox mouse duck owl frog pig cow horse sheep goat lamb hen chick bird
squirrel deer turtle fish whale dolphin lion tiger elephant monkey giraffe zebra panda koala kitten
puppy bunny pony donkey goose swan crow robin parrot penguin seal otter beaver badger hedgehog mole
snail bee butterfly ant spider ladybug worm crab camel wolf hamster""".split()

COLORS = """red blue green yellow pink purple orange brown black white gray gold silver""".split()

SIZES = """big small little tiny huge tall short long round soft""".split()

ADJECTIVES = """shiny old new happy kind funny brave quiet loud gentle clever silly sleepy friendly
bright dark warm cold wet dry fuzzy smooth rough sweet sour fresh clean dirty broken magic special
pretty lovely strange wild busy lazy proud shy curious careful fast slow heavy light soft hard
sticky bumpy fluffy sparkly striped spotty golden wooden plastic paper glass empty full hungry
thirsty tired strong weak young noisy calm cozy chilly sunny rainy windy snowy foggy muddy sandy
grassy rocky tidy messy playful cheerful grumpy lucky jolly lonely""".split()

OBJECTS = """ball kite doll teddy bear car truck train boat plane drum bell book hat cap scarf coat
boot shoe sock glove ring necklace crown box basket bag cup bowl plate spoon fork jar bottle key lock
map flag lamp candle clock watch mirror brush comb pencil crayon paint chair table bed pillow blanket
rope ladder bucket shovel wagon bike swing slide puzzle block robot whistle flute violin guitar piano
trumpet jacket sweater umbrella shell stone feather leaf flower seed acorn pinecone stick bone egg
button ribbon balloon marble coin wallet letter card gift present treasure sticker stamp bead
hammer nail brick tent rocket star moon sun cloud rainbow snowman sandcastle nest carrot apple""".split()

FOODS = """apple banana cake cookie bread cheese soup pie muffin pancake carrot grape pear peach plum
cherry berry honey jam milk juice tea egg rice pizza sandwich candy lemon orange melon corn beans
peas potato tomato salad cereal popcorn pudding waffle toast nut""".split()

PLACES = """park garden forest beach river lake pond hill mountain meadow field farm barn village town
city school library market shop bakery castle tower cave island zoo playground kitchen bedroom attic
cellar yard street bridge harbor station museum circus woods valley desert jungle orchard greenhouse
lighthouse cottage palace camp pier""".split()

FEELINGS = """happy sad scared angry excited proud lonely worried surprised sorry shy brave calm
grumpy jealous curious nervous tired bored glad cheerful upset thankful silly hopeful""".split()

TIMES = ["One sunny morning", "One rainy day", "One cold winter night", "One warm summer day",
         "Early one morning", "Late one afternoon", "On a windy day", "One snowy morning",
         "On a foggy evening", "Once upon a time", "One day", "Long ago", "On a quiet Sunday",
         "On the first day of spring", "One bright autumn day", "After school one day"]

WEATHER = """sun rain wind snow storm fog thunder lightning clouds frost""".split()

ACTIVITIES = ["play tag", "fly a kite", "build a fort", "read a book", "bake a cake", "paint a picture",
              "go for a walk", "look for shells", "plant some seeds", "ride a bike", "sing a song",
              "play hide and seek", "jump in puddles", "climb a tree", "feed the ducks", "make a sandcastle",
              "draw with chalk", "pick berries", "watch the clouds", "count the stars", "skip stones",
              "have a picnic", "dance in the rain", "play the drum", "catch fireflies"]

SOUNDS = """buzz moo quack woof meow tweet hoot oink baa neigh ribbit squeak roar hiss honk""".split()

NUMBERS = """one two three four five six seven eight nine ten eleven twelve""".split()

MORALS = [
    "Sharing makes everyone happy.",
    "It is good to help your friends.",
    "Being brave does not mean you are not scared.",
    "Saying sorry can fix a lot of things.",
    "If you keep trying, you can do hard things.",
    "Telling the truth is always the best choice.",
    "Kind words make the world a little brighter.",
    "Friends are the best treasure of all.",
    "Patience helps things grow.",
    "Listening carefully is a kind of magic.",
    "Even small helpers can do big things.",
    "It is okay to ask for help.",
    "Taking care of others is a way of taking care of yourself.",
    "A good plan starts with a good friend.",
    "Every day is a new chance to be kind.",
]

# Extra everyday words, so that the corpus is a real vocabulary-learning problem.
EXTRA = """water grass tree sky road door window wall floor roof garden fence gate path hole puddle
mud sand snow ice fire smoke light shadow song story game joke dream secret idea plan picture photo
letter note word name friend family mother father sister brother grandma grandpa baby teacher doctor
farmer baker king queen prince princess pirate wizard giant dragon fairy elf knight captain sailor
neighbor morning evening night noon week month year today tomorrow yesterday minute hour corner
middle top bottom inside outside behind under over between around through along across""".split()

EPISODE_LINKS = ("The next day,", "A few days later,", "Later that week,", "One morning after that,",
                 "The week after,", "Some days later,")


@lru_cache(maxsize=1)
def copy_words() -> tuple[str, ...]:
    """Lowercase words that are one GPT-2 token after a space: the alphabet of the copy games and
    of the canaries' secrets, so every secret word is a single, frequent token."""
    enc = gpt2_encoding()
    pool = sorted(set(ANIMALS + COLORS + OBJECTS + FOODS + ADJECTIVES + NUMBERS + PLACES + WEATHER + EXTRA + SIZES))
    return tuple(w for w in pool if len(enc.encode(" " + w)) == 1)


MADE_UP_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "ch", "sh", "br", "gl")
MADE_UP_VOWELS = ("a", "e", "i", "o", "u", "oo", "ee")
MADE_UP_CODAS = ("", "", "", "n", "r", "l", "m", "s", "k")


def made_up_word(pen, capital: bool, taken: set[str] | None = None) -> str:
    """A pronounceable made-up word of 2-4 syllables ("Pigdaruzo", "glimbet"), drawn with a story's
    Pen (train.story_plots; this module, beneath it, does not import it), that GPT-2's BPE splits
    into at least two tokens: after its first token, the rest can only be predicted by copying it
    from where it occurred earlier in the story, which is what an induction head does."""
    enc = gpt2_encoding()
    taken = taken if taken is not None else set()
    for _ in range(100):
        word = "".join(pen.pick(MADE_UP_ONSETS) + pen.pick(MADE_UP_VOWELS) + pen.pick(MADE_UP_CODAS)
                       for _ in range(pen.count(2, 4)))
        word = word.capitalize() if capital else word
        if word not in taken and len(enc.encode(" " + word)) >= 2:
            taken.add(word)
            return word
    raise RuntimeError("could not make a made-up word")  # never happens with these syllables
