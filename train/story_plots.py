"""The writer of one built-in story (story): the seeded Pen, the sentence helpers and the plots (each
takes pen, hero, friend, place, object and returns sentences; the six COPY_PLOTS repeat a random
list of words, predictable only by copying). Everything that draws from a Pen lives here with it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import words as W
from .words import copy_words, made_up_word


# -- helpers ---------------------------------------------------------------------------------
class Pen:
    """A seeded random source with the few choices story writing needs."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def some(self, options, k: int) -> list:
        idx = self.rng.choice(len(options), size=k, replace=False)
        return [options[int(i)] for i in idx]

    def count(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi + 1))


def a(word: str) -> str:
    """'a cat', 'an owl'."""
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


@dataclass
class Character:
    name: str
    kind: str  # "girl", "boy" or an animal
    he: str
    him: str
    his: str

    @property
    def He(self) -> str:
        return self.he.capitalize()


def new_character(pen: Pen, taken: set[str]) -> Character:
    """A child or an animal with a name not already used in this story."""
    roll = pen.rng.random()
    for _ in range(100):
        if roll < 0.4:
            name, kind, g = pen.pick(W.GIRLS), "girl", "f"
        elif roll < 0.8:
            name, kind, g = pen.pick(W.BOYS), "boy", "m"
        else:
            name, kind, g = pen.pick(W.PET_NAMES), pen.pick(W.ANIMALS), pen.pick("fm")
        if name not in taken:
            break
    taken.add(name)
    return Character(name, kind, *(("she", "her", "her") if g == "f" else ("he", "him", "his")))


def intro(pen: Pen, c: Character, place: str) -> str:
    desc = pen.pick(W.SIZES + W.ADJECTIVES[:40])
    return pen.pick([
        f"{pen.pick(W.TIMES)}, there was {a(desc)} {c.kind} named {c.name}.",
        f"{pen.pick(W.TIMES)}, {a(desc)} {c.kind} named {c.name} lived near the {place}.",
        f"There once was {a(c.kind)} called {c.name} who loved the {place}.",
        f"{c.name} was {a(desc)} {c.kind}. {c.He} lived by the {place}.",
    ])


def say(pen: Pen, who: Character, text: str) -> str:
    verb = pen.pick(["said", "said", "asked" if text.endswith("?") else "said", "whispered", "shouted", "called"])
    if pen.chance(0.5):
        return f'"{text}" {verb} {who.name}.'
    return f'{who.name} {verb}, "{text}"'


def feel(pen: Pen, c: Character, feeling: str | None = None) -> str:
    feeling = feeling or pen.pick(W.FEELINGS)
    return pen.pick([f"{c.name} felt {feeling}.", f"{c.He} was very {feeling}.",
                     f"{c.name} was {feeling} and did not know what to do.", f"That made {c.him} feel {feeling}."])


def ending(pen: Pen, c: Character, f: Character) -> list[str]:
    out = [pen.pick([
        f"From that day on, {c.name} and {f.name} were best friends.",
        f"{c.name} and {f.name} smiled and went home together.",
        f"That night, {c.name} went to bed {pen.pick(['happy', 'smiling', 'proud', 'tired but happy'])}.",
        f"And they all had a {pen.pick(['wonderful', 'happy', 'lovely', 'fun'])} day.",
        f"{c.name} hugged {f.name}, and they laughed and laughed.",
        f"The sun went down, and {c.name} waved goodbye to {f.name}.",
    ])]
    if pen.chance(0.5):
        out.append(pen.pick([f"The moral of the story is: {m}" for m in W.MORALS] + W.MORALS))
    return out


def random_words(pen: Pen, k: int) -> list[str]:
    pool = copy_words()
    return [pool[int(i)] for i in pen.rng.integers(len(pool), size=k)]


# -- plots -----------------------------------------------------------------------------------
def plot_lost(pen, c, f, place, obj):
    color = pen.pick(W.COLORS)
    spot = pen.pick(["under the bed", "behind the door", "in the grass", "under a leaf", "in the sand",
                     "next to the tree", "inside a box", "on the top shelf", "in the mud", "under the table"])
    return [
        f"{c.name} had {a(color)} {obj}. {c.He} loved the {color} {obj} very much.",
        f"One day, {c.name} went to the {place} and lost the {obj}.",
        feel(pen, c, pen.pick(["sad", "worried", "upset"])),
        say(pen, c, f"Where is my {obj}? I can not find it!"),
        f"{f.name} came to help. {f.name} looked {spot}.",
        say(pen, f, f"I found it! Your {color} {obj} was {spot}!"),
        f"{c.name} was so {pen.pick(['happy', 'glad', 'thankful'])}. " + say(pen, c, f"Thank you, {f.name}!"),
    ]


def plot_share(pen, c, f, place, obj):
    food = pen.pick(W.FOODS)
    n = pen.count(2, 6)
    return [
        f"{c.name} had {W.NUMBERS[n - 1]} {food}s in {c.his} {pen.pick(['basket', 'bag', 'box', 'lunch box'])}.",
        f"At the {place}, {c.name} saw {f.name}. {f.name} looked {pen.pick(['hungry', 'sad', 'lonely'])}.",
        say(pen, f, "I forgot my lunch today."),
        f"{c.name} thought for a moment. {c.He} wanted to eat all the {food}s, but {c.he} knew that was not kind.",
        say(pen, c, f"Here, {f.name}. You can have some of my {food}s."),
        f"{f.name} smiled a big smile. They sat under a tree and ate the {food}s together.",
        say(pen, f, f"This is the best {food} ever!"),
    ]


def plot_fear(pen, c, f, place, obj):
    fear = pen.pick(["the dark", "the big dog", "the loud storm", "the deep water", "the tall slide",
                     "the thunder", "the old cellar", "the strange noise", "the spider on the wall"])
    return [
        f"{c.name} was scared of {fear}.",
        f"When {c.he} went to the {place}, {c.he} {pen.pick(['hid behind a tree', 'closed his eyes' if c.he == 'he' else 'closed her eyes', 'held on tight to a ' + obj, 'started to cry'])}.",
        say(pen, f, f"What is wrong, {c.name}?"),
        say(pen, c, f"I am scared of {fear}."),
        say(pen, f, "I will stay with you. We can be brave together."),
        f"{f.name} held {c.name}'s hand. Step by step, they {pen.pick(['went on', 'walked closer', 'looked again', 'counted to ten'])}.",
        f"Soon {c.name} saw that {fear} was not so scary after all.",
        feel(pen, c, pen.pick(["brave", "proud", "calm"])),
    ]


def plot_quarrel(pen, c, f, place, obj):
    color = pen.pick(W.COLORS)
    return [
        f"{c.name} and {f.name} were playing at the {place} with {a(color)} {obj}.",
        say(pen, c, f"It is my turn with the {obj}!"),
        say(pen, f, "No, it is my turn!"),
        f"They pulled and pulled, and the {obj} {pen.pick(['fell in the mud', 'broke', 'rolled away', 'flew into a bush'])}.",
        f"Both of them felt {pen.pick(['sad', 'angry', 'sorry', 'upset'])}. Nobody could play now.",
        f"After a while, {c.name} said sorry. " + say(pen, c, f"I am sorry, {f.name}. We can take turns."),
        say(pen, f, "I am sorry too. You can go first."),
        f"They took turns with the {obj}, and the game was much more fun.",
    ]


def plot_trip(pen, c, f, place, obj):
    places = pen.some(W.PLACES, 3)
    sights = [f"{a(pen.pick(W.ADJECTIVES))} {pen.pick(W.ANIMALS)}" for _ in range(3)]
    return [
        f"{c.name} and {f.name} went on a trip. First they went to the {places[0]}.",
        f"At the {places[0]} they saw {sights[0]}. " + say(pen, f, f"Look at the {sights[0].split()[-1]}!"),
        f"Then they walked to the {places[1]}, where they saw {sights[1]}.",
        f"Last of all, they came to the {places[2]}. There was {sights[2]} and {a(pen.pick(W.COLORS))} {obj}.",
        say(pen, c, "This is the best trip ever!"),
        f"When they came home, {c.name} told {c.his} {pen.pick(['mom', 'dad', 'grandma', 'grandpa'])} about the {places[0]}, the {places[1]} and the {places[2]}.",
    ]


def plot_help_animal(pen, c, f, place, obj):
    animal = pen.pick(W.ANIMALS)
    hurt = pen.pick(["a hurt leg", "a wet wing", "a thorn in its paw", "no way home", "nothing to eat"])
    return [
        f"At the {place}, {c.name} found a little {animal} with {hurt}.",
        say(pen, c, f"Poor little {animal}. I will help you."),
        f"{c.name} {pen.pick(['wrapped it in a soft blanket', 'gave it some water', 'made a bed in a box', 'fed it a few seeds'])}.",
        f"{f.name} came to see. " + say(pen, f, "Can I help too?"),
        f"Together they took care of the {animal} for {W.NUMBERS[pen.count(1, 7)]} days.",
        f"Soon the {animal} was well again. It {pen.pick(['ran', 'hopped', 'flew', 'swam'])} away, but it came back every morning to say hello.",
        feel(pen, c, pen.pick(["happy", "proud", "glad"])),
    ]


def plot_build(pen, c, f, place, obj):
    thing = pen.pick(["tower", "sandcastle", "fort", "bridge", "house for a bird", "boat", "snowman", "kite"])
    return [
        f"{c.name} wanted to build a {thing} at the {place}.",
        f"{c.He} worked and worked. But the {thing} fell down.",
        feel(pen, c, pen.pick(["sad", "grumpy", "upset"])),
        say(pen, f, "Do not give up. Let us try again together."),
        f"This time they were careful. {f.name} held it, and {c.name} {pen.pick(['added one more piece', 'made it strong', 'used a long stick', 'pressed it down'])}.",
        f"The {thing} stood tall. It was the best {thing} at the {place}!",
        say(pen, c, f"We did it, {f.name}!"),
    ]


def plot_gift(pen, c, f, place, obj):
    color = pen.pick(W.COLORS)
    return [
        f"It was {f.name}'s birthday. {c.name} wanted to give {f.him} a gift.",
        f"{c.He} had no money, so {c.he} made {a(color)} {obj} out of {pen.pick(['paper', 'clay', 'wood', 'string', 'leaves'])}.",
        f"{c.He} wrapped it with a {pen.pick(W.COLORS)} ribbon and walked to the {place}.",
        say(pen, c, f"Happy birthday, {f.name}! I made this for you."),
        f"{f.name} opened the gift and saw the {color} {obj}.",
        say(pen, f, "I love it! It is the best gift because you made it."),
    ]


def plot_rain(pen, c, f, place, obj):
    act = pen.pick(W.ACTIVITIES)
    act2 = pen.pick(W.ACTIVITIES)
    return [
        f"{c.name} and {f.name} wanted to {act} at the {place}.",
        f"But then the {pen.pick(['rain', 'storm', 'snow', 'wind'])} came. They had to stay inside.",
        say(pen, c, "Now our day is ruined."),
        say(pen, f, f"No, it is not! We can {act2} instead."),
        f"So they decided to {act2}. It was so much fun that they forgot about the weather.",
        f"When the sky was {pen.pick(['blue', 'clear', 'bright'])} again, they went out to {act} too.",
    ]


def plot_memory_game(pen, c, f, place, obj):
    seq = " ".join(random_words(pen, pen.count(4, 14)))
    out = [
        f"{c.name} and {f.name} played a memory game at the {place}.",
        f"{c.name} said the secret words: {seq}.",
        f"{f.name} closed {f.his} eyes and said the secret words back: {seq}.",
        say(pen, c, "You remembered them all!"),
    ]
    if pen.chance(0.6):
        out.append(f"Then they said the words together: {seq}.")
    seq2 = " ".join(random_words(pen, pen.count(4, 10)))
    out += [f"Now it was {f.name}'s turn. {f.He} said: {seq2}.", f"{c.name} said: {seq2}."]
    return out


def plot_echo(pen, c, f, place, obj):
    out = [f"{c.name} and {f.name} played an echo game at the {place}. {c.name} said some words, "
           f"and {f.name} said them back."]
    for _ in range(pen.count(2, 4)):
        seq = " ".join(random_words(pen, pen.count(3, 12)))
        out += [f"{c.name}: {seq}.", f"{f.name}: {seq}."]
    out.append(say(pen, f, pen.pick(["That was fun!", "Again, again!", "My turn to start!", "I never miss a word!"])))
    return out


def plot_parrot(pen, c, f, place, obj):
    bird = pen.pick(W.PET_NAMES)
    out = [f"{c.name} had a parrot called {bird}. {bird} repeated every word it heard."]
    for _ in range(pen.count(1, 3)):
        seq = " ".join(random_words(pen, pen.count(8, 30)))
        out += [f"{c.name} said: {seq}.", f"And {bird} said: {seq}."]
    out.append(f"{f.name} laughed. " + say(pen, f, f"{bird} never forgets a word!"))
    return out


def plot_packing(pen, c, f, place, obj):
    items = pen.some(W.OBJECTS, pen.count(3, 7))
    listed = ", ".join(f"{a(i)}" for i in items[:-1]) + f" and {a(items[-1])}"
    return [
        f"{c.name} was going to the {place} with {f.name}. {c.He} packed {c.his} bag.",
        f"{c.He} packed {listed}.",
        say(pen, f, "Did you pack everything?"),
        f"{c.name} checked the bag: {listed}.",
        say(pen, c, "Yes, I have everything!"),
        f"At the {place}, they used the {items[0]} and the {items[-1]}, and it was a {pen.pick(['great', 'good', 'fun'])} day.",
    ]


def plot_password(pen, c, f, place, obj):
    pw = " ".join(random_words(pen, pen.count(2, 6)))
    return [
        f"{c.name} and {f.name} had a secret club in the {place}.",
        f"To come in, you had to say the password. The password was {pw}.",
        f"One day {f.name} knocked on the door. " + say(pen, c, "What is the password?"),
        say(pen, f, f"The password is {pw}."),
        f"{c.name} opened the door. The password was right: {pw}.",
        f"Inside the club, they had {a(pen.pick(W.COLORS))} {obj} and lots of {pen.pick(W.FOODS)}s.",
    ]


def plot_song(pen, c, f, place, obj):
    line = " ".join(random_words(pen, pen.count(3, 8)))
    return [
        f"{c.name} made up a song at the {place}. The song went like this: {line}, {line}, la la la.",
        f"{f.name} liked the song. " + say(pen, f, "Sing it again!"),
        f"So {c.name} sang it again: {line}, {line}, la la la.",
        f"Soon everyone at the {place} was singing: {line}, {line}, la la la.",
    ]


def plot_wave(pen, c, f, place, obj):
    return [
        f"{c.name} and {f.name} were neighbors. Their windows looked out on the same {pen.pick(['street', 'garden', 'yard', 'park'])}.",
        f"Every morning, {c.name} and {f.name} wave to each other. They wave to each other every night too.",
        f"One morning, {f.name} did not wave. {c.name} felt {pen.pick(['worried', 'sad', 'lonely'])}.",
        f"{c.name} went to {f.name}'s door with {a(obj)}. {f.name} was sick in bed.",
        say(pen, c, f"I brought you {a(obj)} so you feel better."),
        f"Soon {f.name} was well again. Now they wave to each other and smile every day.",
    ]


def plot_truth(pen, c, f, place, obj):
    thing = pen.pick(["vase", "cup", "lamp", "plate", "window", "jar", "clock"])
    grown = pen.pick(["mom", "dad", "grandma", "grandpa", "teacher"])
    return [
        f"{c.name} was playing with {a(obj)} inside the house.",
        f"Oops! The {obj} hit the {thing}, and the {thing} broke.",
        f"{c.name} was scared. {c.He} thought about hiding the pieces.",
        f"{c.his.capitalize()} {grown} came in. " + say(pen, c, f"I am sorry. I broke the {thing}."),
        f'"Thank you for telling the truth," said {c.his} {grown}. "We can fix it together."',
        f"They glued the {thing}, and {c.name} felt much better.",
    ]


def plot_skill(pen, c, f, place, obj):
    skill = pen.pick(["ride a bike", "swim", "tie a shoe", "jump rope", "whistle", "read", "climb the rope", "skate"])
    tries = pen.count(2, 4)
    out = [f"{c.name} wanted to learn to {skill}.", f"{c.He} tried, but {c.he} fell down."]
    for _ in range(tries - 1):
        out.append(pen.pick([f"{c.He} tried again and fell again.", f"{c.He} tried again. It was still too hard.",
                             "Again and again, it did not work."]))
    out += [say(pen, f, "Keep trying! You are getting better."),
            f"On the {['second', 'third', 'fourth', 'fifth'][tries - 1]} try, {c.name} did it! {c.He} could {skill}!",
            feel(pen, c, "proud")]
    return out


def plot_garden(pen, c, f, place, obj):
    plant = pen.pick(["sunflower", "tomato", "carrot", "bean", "rose", "pumpkin", "apple tree"])
    return [
        f"{c.name} planted a little {plant} seed in the {pen.pick(['garden', 'yard', 'pot', 'field'])}.",
        f"Every day, {c.he} gave it water. But nothing happened.",
        say(pen, c, "Why is my seed not growing?"),
        say(pen, f, "Plants need time. Be patient."),
        f"So {c.name} waited. One day, a tiny green leaf came up. Then another, and another.",
        f"At the end of the summer, there was a big {plant}. {c.name} shared it with {f.name}.",
    ]


def plot_count(pen, c, f, place, obj):
    n = pen.count(3, 10)
    animal = pen.pick(W.ANIMALS)
    counting = ", ".join(W.NUMBERS[:n])
    return [
        f"{c.name} and {f.name} saw some {animal}s at the {place}.",
        say(pen, f, f"How many {animal}s are there?"),
        f"{c.name} counted: {counting}.",
        say(pen, c, f"There are {W.NUMBERS[n - 1]} {animal}s!"),
        f"Then {f.name} counted too: {counting}. " + say(pen, f, f"Yes, {W.NUMBERS[n - 1]}!"),
        f"The {animal}s said {pen.pick(W.SOUNDS)} {pen.pick(W.SOUNDS)}, and the children laughed.",
    ]


PLOTS = [plot_lost, plot_share, plot_fear, plot_quarrel, plot_trip, plot_help_animal, plot_build, plot_gift,
         plot_rain, plot_memory_game, plot_packing, plot_password, plot_song, plot_wave, plot_truth, plot_skill,
         plot_garden, plot_count, plot_echo, plot_parrot]
COPY_PLOTS = {plot_memory_game, plot_password, plot_song, plot_packing, plot_echo, plot_parrot}


# -- a story ---------------------------------------------------------------------------------
def story(pen: Pen, copy_weight: float = 1.0, burstiness: float = 0.0, episodes: int = 1) -> str:
    """An introduction, `episodes` plots with the same characters and object, an ending, sometimes a
    moral. Copy plots are `copy_weight` times likelier than others; `burstiness` (Chan et al. 2022) is
    the chance that each character and the object get a made-up name of several tokens, new in every
    story and the same throughout it. At 0 and 1 (the defaults) those options draw nothing."""
    weights = np.array([copy_weight if p in COPY_PLOTS else 1.0 for p in PLOTS])
    plot = PLOTS[int(pen.rng.choice(len(PLOTS), p=weights / weights.sum()))]
    taken: set[str] = set()
    c, f = new_character(pen, taken), new_character(pen, taken)
    place, obj = pen.pick(W.PLACES), pen.pick(W.OBJECTS)
    if burstiness > 0:
        for who in (c, f):
            if pen.chance(burstiness):
                who.name = made_up_word(pen, capital=True, taken=taken)
        if pen.chance(burstiness):
            obj = made_up_word(pen, capital=False)
    lines = [intro(pen, c, place)]
    if pen.chance(0.5):
        lines.append(f"{c.name} had a friend named {f.name}, {a(f.kind)}.")
    lines += plot(pen, c, f, place, obj)
    for _ in range(episodes - 1):
        plot = PLOTS[int(pen.rng.choice(len(PLOTS), p=weights / weights.sum()))]
        lines.append(f"{pen.pick(W.EPISODE_LINKS)} {c.name} and {f.name} met again.")
        lines += plot(pen, c, f, pen.pick(W.PLACES), obj)
    return " ".join(lines + ending(pen, c, f))
