"""Built-in vocabularies of the lexicon grain extractor (plain Python data, no I/O).

Every entry is lowercase; multi-word entries are written with single spaces and are matched
token by token (so ``"fire hydrant"`` also matches ``"Fire-Hydrant"``). Nouns are listed in the
singular; :mod:`mrbench.grains.lexicon` matches plurals through :data:`IRREGULAR_PLURALS` and the
regular English rules. Which list a word is in decides its grain type:

* :data:`ENTITY_NOUNS` → ``entity``; :data:`SCENE_NOUNS` → ``scene`` (places, settings, time of day,
  weather);
* :data:`COLORS`, :data:`SIZES`, :data:`MATERIALS`, :data:`SHAPES_PATTERNS`, :data:`OTHER_ADJECTIVES`,
  :data:`COUNT_WORDS` → ``attribute``;
* :data:`ACTIONS_STATES` → ``action_or_state``;
* :data:`RELATION_PREPOSITIONS` open a ``relation``.

:data:`COLLECTIVE_NOUNS` (``"a group of"``, ``"a picture of"``) and :data:`DETERMINERS` never yield a
grain.
"""

from __future__ import annotations

COCO_CATEGORIES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)
"""The 80 COCO object categories (official names)."""

_PEOPLE = (
    "man", "woman", "boy", "girl", "child", "kid", "baby", "toddler", "lady", "guy", "gentleman",
    "people", "adult", "teenager", "teen", "player", "tennis player", "baseball player",
    "soccer player", "skier", "surfer", "skateboarder", "snowboarder", "rider", "biker", "cyclist",
    "batter", "pitcher", "catcher", "umpire", "chef", "cook", "police officer", "policeman",
    "officer", "soldier", "worker", "driver", "pilot", "student", "family", "couple", "crowd",
    "friend", "mother", "father", "son", "daughter", "bride", "groom", "vendor", "customer",
    "tourist", "passenger", "pedestrian", "spectator", "fan", "athlete", "kitesurfer", "jockey",
    "cowboy", "farmer", "doctor", "nurse", "waiter", "waitress", "team", "audience", "individual",
)
_ANIMALS = (
    "animal", "puppy", "kitten", "bull", "calf", "pony", "goat", "pig", "duck", "goose", "swan",
    "pigeon", "seagull", "gull", "parrot", "owl", "eagle", "hawk", "chicken", "rooster",
    "lamb", "deer", "monkey", "lion", "tiger", "polar bear", "fish", "mouse", "squirrel", "rabbit",
    "bunny", "cattle", "ox", "donkey", "camel", "rhino", "hippo", "kangaroo", "crow", "dove",
    "stuffed animal", "teddy", "ram", "mare", "foal", "wave",
)
_VEHICLES = (
    "bike", "motorbike", "motor bike", "scooter", "moped", "van", "suv", "taxi", "cab", "jeep",
    "pickup truck", "fire truck", "garbage truck", "tow truck", "dump truck", "semi truck",
    "double decker bus", "school bus", "city bus", "tour bus", "trolley", "tram", "streetcar",
    "locomotive", "engine", "train car", "subway", "jet", "plane", "airliner", "aircraft",
    "helicopter", "sailboat", "kayak", "canoe", "ship", "yacht", "ferry", "vehicle", "wagon",
    "cart", "carriage", "tractor", "trailer", "limo", "limousine", "ambulance", "police car",
    "sports car", "race car", "wheel", "tire", "boat",
)
_FOOD = (
    "food", "meal", "dish", "plate", "salad", "soup", "bread", "toast", "sandwich", "burger",
    "hamburger", "cheeseburger", "fries", "french fries", "pasta", "spaghetti", "noodle", "rice",
    "meat", "steak", "chicken", "beef", "pork", "bacon", "sausage", "ham", "egg", "cheese",
    "vegetable", "fruit", "tomato", "potato", "onion", "pepper", "lettuce", "cucumber", "corn",
    "bean", "mushroom", "olive", "spinach", "cauliflower", "avocado", "lemon", "lime", "grape",
    "strawberry", "blueberry", "berry", "cherry", "peach", "pear", "pineapple", "melon",
    "watermelon", "coconut", "doughnut", "cupcake", "cookie", "pie", "dessert", "ice cream",
    "chocolate", "muffin", "bagel", "pastry", "croissant", "waffle", "pancake", "cereal", "coffee",
    "tea", "juice", "milk", "wine", "beer", "drink", "beverage", "soda", "sauce", "ketchup",
    "mustard", "butter", "frosting", "icing", "topping", "pepperoni", "sushi", "taco", "burrito",
    "slice", "snack", "breakfast", "lunch", "dinner", "veggie", "hot dog bun", "bun", "nut",
    "wedding cake", "birthday cake", "candle", "pizza slice",
)
_FURNITURE_HOUSEHOLD = (
    "table", "desk", "sofa", "armchair", "stool", "shelf", "bookshelf", "cabinet", "cupboard",
    "drawer", "dresser", "counter", "countertop", "lamp", "light", "street light", "streetlight",
    "lamp post", "pole", "mirror", "window", "door", "curtain", "blanket", "pillow", "cushion",
    "sheet", "rug", "carpet", "floor", "wall", "ceiling", "fireplace", "stove", "fridge",
    "dishwasher", "faucet", "tub", "bathtub", "shower", "towel", "toilet paper", "plant",
    "flower", "tree", "bush", "television", "computer", "monitor", "screen", "desktop",
    "computer mouse", "phone", "cellphone", "smartphone", "tablet", "camera", "controller",
    "wii remote", "game controller", "video game", "speaker", "box", "bag", "basket", "container",
    "jar", "pot", "pan", "tray", "cutting board", "mug", "glass", "wine bottle", "napkin",
    "tablecloth", "utensil", "chopstick", "teapot", "kettle", "blender", "picture", "painting",
    "poster", "sign", "street sign", "clock tower", "tower", "building", "house", "church",
    "bridge", "fence", "gate", "wall clock", "bench", "toy", "doll", "ball", "tennis ball",
    "soccer ball", "baseball", "football", "basketball", "bat", "glove", "mitt", "helmet",
    "racket", "racquet", "tennis racquet", "net", "goal", "ski", "ski pole", "board", "sail",
    "paddle", "surf board", "skate board", "luggage", "briefcase", "purse", "wallet", "key",
    "bucket", "trash can", "garbage can", "box", "newspaper", "magazine", "paper", "pen",
    "pencil", "notebook", "laptop computer", "cord", "cable", "wire", "rope", "leash", "collar",
    "flag", "banner", "balloon", "statue", "fountain", "umbrella", "tent", "chair", "vase",
    "flower vase", "bowl", "plate", "platter", "kitchen counter", "kitchen table", "dining table",
    "coffee table", "refrigerator", "parking meter", "traffic signal", "car", "truck",
    "hydrant", "meter", "post", "cone", "traffic cone", "track", "train track", "railroad track",
    "rail", "platform", "crosswalk", "kite string", "frame", "shelf", "sticker", "graffiti",
    "stuffed bear", "bear", "headboard", "bed", "mattress", "crib", "toilet seat", "toothpaste",
    "soap", "hair dryer", "hair drier", "brush", "comb", "razor", "remote control", "keyboard",
    "duffel bag", "bicycle", "skateboard ramp", "ramp", "bowl", "oven", "microwave oven",
    "cake stand", "board game", "book", "pizza box", "pizza pan", "pizza cutter", "window sill",
    "windowsill", "balcony", "roof", "chimney", "steeple", "clock face", "stop light",
    "power line", "bench", "kite", "surfboard", "snowboard", "skis", "statue", "rock", "stone",
    "log", "branch", "leaf", "trunk", "pole", "dock", "pier", "boardwalk", "sidewalk",
)
_CLOTHING = (
    "shirt", "t-shirt", "tshirt", "tank top", "jacket", "coat", "sweater", "hoodie",
    "sweatshirt", "vest", "suit", "dress", "skirt", "pants", "jeans", "shorts", "uniform",
    "hat", "cap", "baseball cap", "beanie", "hood", "scarf", "tie", "bow tie", "glove",
    "sunglasses", "glasses", "goggles", "shoe", "sneaker", "boot", "sandal", "sock", "belt",
    "backpack", "wetsuit", "swimsuit", "bikini", "apron", "costume", "outfit", "jersey",
    "helmet", "mask", "necklace", "bracelet", "watch", "wristwatch", "ring", "earring",
    "umbrella", "raincoat", "clothes", "clothing",
)
_BODY = (
    "head", "face", "hair", "eye", "ear", "nose", "mouth", "tongue", "tooth", "beard",
    "mustache", "hand", "arm", "leg", "foot", "finger", "knee", "shoulder", "neck", "back",
    "tail", "trunk", "tusk", "horn", "mane", "wing", "beak", "paw", "hoof", "fur", "body", "lap",
)

ENTITY_NOUNS: frozenset[str] = frozenset(
    COCO_CATEGORIES + _PEOPLE + _ANIMALS + _VEHICLES + _FOOD + _FURNITURE_HOUSEHOLD + _CLOTHING + _BODY
) - frozenset(("back",))
"""Nouns (singular, lowercase) that yield ``entity`` grains. ``"back"`` is left out: it is mostly
part of a spatial phrase (``"in the back of"``)."""

SCENE_NOUNS: frozenset[str] = frozenset((
    "beach", "kitchen", "bathroom", "bedroom", "living room", "dining room", "office", "restaurant",
    "cafe", "bar", "street", "city street", "road", "dirt road", "highway", "freeway", "city",
    "town", "downtown", "park", "field", "grass", "lawn", "yard", "backyard",
    "garden", "forest", "woods", "jungle", "mountain", "hill", "hillside", "slope", "ski slope",
    "snow", "ocean", "sea", "lake", "river", "pond", "water", "shore", "shoreline",
    "sky", "airport", "runway", "tarmac", "train station", "station", "bus stop", "tennis court",
    "court", "baseball field", "baseball diamond", "soccer field", "stadium", "farm", "pasture",
    "zoo", "enclosure", "desert", "sand", "market", "parking lot", "intersection", "corner",
    "harbor", "marina", "countryside", "playground", "skate park", "store", "shop", "bakery",
    "classroom", "library", "hallway", "hotel room", "room", "night", "day", "sunset", "sunrise",
    "rain", "fog", "dusk", "air", "outdoors", "indoors", "dirt", "mud", "savanna",
    "meadow", "track field", "subway station", "plaza", "square", "alley", "neighborhood",
))
"""Place / setting nouns that yield ``scene`` grains (never ``entity``). Time of day and weather
(``night``, ``sunset``, ``rain``, ``snow``) count as scenes."""

COLORS: frozenset[str] = frozenset((
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "brown", "black", "white",
    "gray", "grey", "silver", "gold", "golden", "beige", "tan", "teal", "maroon", "navy",
    "turquoise", "colorful", "colourful", "multicolored", "multi colored", "black and white",
    "dark", "bright", "light blue", "dark blue", "light brown", "dark brown", "blond", "blonde",
    "neon", "rainbow",
))
SIZES: frozenset[str] = frozenset((
    "big", "large", "small", "little", "tiny", "huge", "giant", "tall", "short", "long", "wide",
    "narrow", "thin", "thick", "fat", "skinny", "massive", "enormous", "miniature", "mini",
    "high", "low",
))
MATERIALS: frozenset[str] = frozenset((
    "wooden", "wood", "metal", "metallic", "plastic", "glass", "stone", "brick", "concrete",
    "steel", "iron", "leather", "paper", "cardboard", "ceramic", "porcelain", "marble", "cotton",
    "wool", "clay", "rubber", "tile", "tiled", "stainless steel", "granite", "straw", "wicker", "denim",
    "fur", "furry",
))
SHAPES_PATTERNS: frozenset[str] = frozenset((
    "round", "square", "rectangular", "circular", "triangular", "oval", "striped", "spotted",
    "plaid", "checkered", "polka dot", "floral", "curved", "flat", "pointed", "curly", "straight",
))
OTHER_ADJECTIVES: frozenset[str] = frozenset((
    "young", "old", "elderly", "older", "empty", "wet", "dry", "full", "clean", "dirty", "new",
    "fresh", "ripe", "cute", "pretty", "beautiful", "handsome", "ugly", "happy", "sad", "hungry",
    "busy", "crowded", "sunny", "cloudy", "rainy", "snowy", "foggy", "grassy", "sandy", "rocky",
    "muddy", "shiny", "messy", "neat", "fancy", "modern", "antique", "vintage", "broken", "shirtless",
    "male", "female", "adult", "baby", "asian", "hot", "cold", "warm", "frozen", "healthy", "tasty",
    "delicious", "homemade", "fried", "grilled", "baked", "roasted", "toasted", "cooked", "raw",
    "sliced", "chopped", "frosted", "glazed", "sweet", "spicy", "cheesy", "leafy", "wild",
    "domestic", "professional", "famous", "various", "different", "double", "tiled", "lit",
    "quiet", "calm", "deep", "shallow", "huge", "heavy", "light", "electric", "digital", "dead",
    "bare", "lush", "green", "wild", "stuffed", "fluffy", "hairy", "bald", "bearded", "tall",
    "elegant", "simple", "plain", "little", "outdoor", "indoor", "open air", "city", "urban", "rural",
    "residential", "commercial", "public", "private", "unmade",
))
"""Other frequent adjectives (age, condition, weather, taste...)."""

NUMBER_WORDS: dict[str, str] = {
    "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "dozen": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "twenty": "20", "single": "1",
    "both": "2",
}
"""Number words → digits (the ``key`` of a count attribute uses the digits)."""

VAGUE_COUNTS: frozenset[str] = frozenset(("several", "many", "multiple", "numerous", "few"))
"""Vague quantity words, also ``attribute`` grains (counts)."""

COUNT_WORDS: frozenset[str] = frozenset(NUMBER_WORDS) | VAGUE_COUNTS

ACTIONS_STATES: frozenset[str] = frozenset((
    # -ing forms
    "standing", "sitting", "lying", "laying", "sleeping", "walking", "running", "jumping",
    "riding", "holding", "carrying", "eating", "drinking", "playing", "flying", "swimming",
    "surfing", "skiing", "skateboarding", "snowboarding", "skating", "biking", "driving",
    "parking", "waiting", "looking", "watching", "talking", "smiling", "laughing", "posing",
    "throwing", "catching", "hitting", "swinging", "kicking", "grazing", "resting", "reading",
    "writing", "typing", "cooking", "cutting", "preparing", "serving", "making", "wearing",
    "using", "pulling", "pushing", "crossing", "leaning", "hanging", "sticking", "climbing",
    "kneeling", "squatting", "bending", "reaching", "pointing", "waving", "feeding", "petting",
    "hugging", "kissing", "sharing", "brushing", "washing", "cleaning", "taking", "giving",
    "getting", "going", "coming", "heading", "leaving", "traveling", "travelling", "moving",
    "passing", "approaching", "entering", "boarding", "loading", "unloading", "landing",
    "taking off", "floating", "sailing", "rowing", "paddling", "fishing", "camping", "shopping",
    "selling", "buying", "working", "painting", "drawing", "singing", "dancing", "performing",
    "practicing", "competing", "racing", "chasing", "following", "leading", "herding", "pulling",
    "towing", "blowing", "falling", "diving", "splashing", "wading", "tossing", "serving",
    "batting", "pitching", "dribbling", "bouncing", "rolling", "spinning", "turning", "stopping",
    "stopped", "sniffing", "licking", "biting", "chewing", "drinking", "staring", "gazing",
    "peeking", "hiding", "crouching", "perched", "perching", "nesting", "roaming", "wandering",
    "browsing", "foraging", "cuddling", "snuggling", "curled", "curled up", "stretching",
    "yawning", "crying", "blowing out", "lighting", "filling", "slicing", "chopping", "stirring",
    "baking", "frying", "grilling", "displaying", "showing", "covering", "surrounding",
    "overlooking", "facing", "touching", "grabbing", "lifting", "dragging", "balancing",
    "attempting", "trying", "preparing to", "doing", "performing a trick", "doing a trick",
    "jumping over", "laying down", "lying down", "sitting down", "standing up",
    # states / participles
    "open", "opened", "closed", "shut", "parked", "asleep", "awake", "covered", "filled",
    "topped", "stacked", "piled", "lined", "surrounded", "decorated", "loaded", "packed",
    "tied", "attached", "mounted", "displayed", "placed", "seated", "hung", "lined up",
    "dressed", "cut", "stopped", "turned on", "turned off", "on display", "docked", "moored", "abandoned",
    "smiling", "lit up", "painted", "wrapped", "folded", "spread", "scattered", "filled up",
    # third-person present forms
    "stands", "sits", "lies", "lays", "sleeps", "walks", "runs", "jumps", "rides", "holds",
    "carries", "eats", "drinks", "plays", "flies", "swims", "surfs", "skis", "skates", "drives",
    "waits", "looks", "watches", "talks", "smiles", "poses", "throws", "catches", "hits",
    "swings", "kicks", "grazes", "rests", "reads", "cuts", "prepares", "makes", "wears", "uses",
    "pulls", "pushes", "crosses", "leans", "hangs", "climbs", "kneels", "reaches", "points",
    "feeds", "hugs", "travels", "moves", "passes", "floats", "sails", "sells", "works",
    "chases", "leads", "laughs", "cooks", "serves", "bats", "pitches", "sit", "stand", "ride",
    "eat", "play", "lay", "wait", "hold", "walk", "graze", "rest", "fly",
))
"""Verb forms (-ing, present, a few participles) and states (``open``, ``closed``, ``parked``)."""

NOUN_ING_WORDS: frozenset[str] = frozenset((
    "building", "ceiling", "clothing", "painting", "wedding", "frosting", "icing", "topping",
    "stuffing", "dressing", "awning", "railing", "evening", "morning", "king", "ring", "string",
    "thing", "something", "nothing", "anything", "everything", "ping", "wing", "spring", "swing",
    "sibling", "pudding", "seasoning", "filling", "siding", "landing", "parking", "living",
    "dining", "during", "sing", "bring", "sling", "ceiling", "lighting", "bring",
))
"""Words ending in -ing that are not verb forms (never guessed as actions)."""

IRREGULAR_PLURALS: dict[str, str] = {
    "people": "person", "men": "man", "women": "woman", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "knives": "knife", "leaves": "leaf",
    "shelves": "shelf", "wolves": "wolf", "loaves": "loaf", "calves": "calf", "halves": "half",
    "oxen": "ox", "policemen": "policeman", "gentlemen": "gentleman", "firemen": "fireman",
    "kids": "kid", "ladies": "lady", "buses": "bus", "busses": "bus", "glasses": "glasses",
    "sunglasses": "sunglasses", "skis": "skis", "scissors": "scissors", "jeans": "jeans",
    "pants": "pants", "shorts": "shorts", "fries": "fries", "clothes": "clothes", "goggles": "goggles",
    "woods": "woods", "sheep": "sheep", "fish": "fish", "deer": "deer",
    "cattle": "cattle", "series": "series", "species": "species", "teddies": "teddy",
    "dice": "die", "hooves": "hoof", "scarves": "scarf", "wives": "wife", "lives": "life",
    "bikes": "bike", "tomatoes": "tomato", "potatoes": "potato", "dishes": "dish",
}
"""Plural → singular where the regular rules fail (or where the plural is itself the lemma)."""

DETERMINERS: frozenset[str] = frozenset((
    "a", "an", "the", "this", "that", "these", "those", "his", "her", "their", "its", "my",
    "your", "our", "some", "another", "other", "each", "every", "all", "any", "one's",
))
"""Words skipped inside a noun phrase (never grains)."""

INTENSIFIERS: frozenset[str] = frozenset((
    "very", "really", "quite", "extremely", "rather", "pretty", "fairly", "so", "too", "most",
    "more", "bright", "partially", "half", "mostly", "brightly", "freshly", "nicely", "well",
))
"""Adverbs allowed inside a noun phrase before adjectives (never grains themselves)."""

COLLECTIVE_NOUNS: frozenset[str] = frozenset((
    "group", "herd", "flock", "bunch", "pair", "couple", "lot", "lots", "number", "crowd", "row",
    "line", "stack", "pile", "set", "fleet", "team", "variety", "assortment", "collection",
    "selection", "kind", "type", "piece", "pieces", "slice", "slices", "close up", "closeup",
    "close-up", "picture", "photo", "photograph", "image", "view", "shot", "snapshot", "display",
    "plenty", "handful", "box", "bowl", "plate", "cup", "glass", "tray", "basket", "bottle",
))
"""Nouns that, followed by ``of``, are collective / framing words. ``"a group of people"`` and
``"a picture of a cat"`` yield no grain for ``group`` / ``picture``. Container nouns (``plate``,
``bowl``, ``cup``, ``glass``...) are in this list too but are still entities; see
:data:`CONTAINER_NOUNS`."""

CONTAINER_NOUNS: frozenset[str] = frozenset((
    "box", "bowl", "plate", "cup", "glass", "tray", "basket", "bottle",
))
"""Collective nouns that are concrete objects: ``"a plate of food"`` gives the entities plate and food."""

RELATION_PREPOSITIONS: tuple[str, ...] = (
    "to the left of", "to the right of", "on the left of", "on the right of", "on the left side of",
    "on the right side of", "left of", "right of", "in front of", "in the front of", "on top of",
    "on the top of", "at the top of", "in the back of", "on the back of", "at the back of",
    "in the middle of", "in the center of", "on the side of", "by the side of", "on the edge of",
    "at the edge of", "at the end of", "on the corner of", "next to", "close to", "out of",
    "in between", "alongside", "behind", "under", "underneath", "beneath", "below", "above",
    "over", "near", "beside", "besides", "by", "on", "onto", "upon", "atop", "in", "inside",
    "into", "with", "at", "across", "along", "through", "around", "between", "among", "against",
    "toward", "towards", "outside", "outside of", "inside of", "off", "past", "down",
)
"""Spatial / relational prepositions (multi-word ones are matched first)."""

NEGATORS: frozenset[str] = frozenset(("no", "not", "without", "never", "none", "nobody", "nothing"))
"""Words that negate the phrase that follows them (see the lexicon extractor's negation rule)."""

REMOVAL_VERBS: tuple[str, ...] = ("remove", "delete", "erase", "eliminate", "get rid of", "take away", "take out")
"""Edit verbs whose object is absent from the target (CIRR-style "remove the kite"), when used as an
imperative: base form at the start of a clause (see the lexicon extractor's negation rule)."""

SUBSTITUTION_VERBS: dict[str, tuple[str, ...]] = {
    "replace": ("with", "by"), "swap": ("for", "with"), "switch": ("for", "with"), "exchange": ("for", "with"),
    "change": ("to", "into", "for"), "turn": ("into",),
}
"""Edit verbs ``V X <linker> Y`` whose first object ``X`` is replaced by ``Y`` ("replace the cat with a
dog"), each with the words that may link the two; imperative only, like :data:`REMOVAL_VERBS`."""

CONTRAST_MARKERS: tuple[str, ...] = ("instead of", "rather than")
"""Phrases whose following phrase is what the text does *not* ask for ("two dogs instead of one")."""

IMPERATIVE_LEADS: frozenset[str] = frozenset(("please", "just", "also", "now", "simply", "then"))
"""Words that may precede an edit verb at the start of its clause ("please remove the cup")."""

EDIT_VERBS: frozenset[str] = frozenset((
    "add", "make", "remove", "delete", "erase", "eliminate", "get", "take", "change", "replace", "swap",
    "switch", "exchange", "turn", "put", "show", "have", "keep", "move", "place", "give", "zoom", "crop",
    "use", "bring", "let", "set", "paint", "color", "colour", "flip", "rotate", "include", "insert", "leave",
    "increase", "reduce", "decrease", "fill", "focus", "center", "shift", "enlarge", "shrink",
))
"""Base-form verbs that start an edit instruction ("make the dog brown and remove the cat"): an edit
verb after *and* / *but* is an instruction only in a clause such a verb starts, else the text is a
description ("two men stand on a ladder and remove the sign")."""

CLAUSE_CUES: frozenset[str] = frozenset((
    "is", "are", "was", "were", "has", "have", "now", "stays", "stay", "remains", "remain", "should", "must",
    "can", "will", "looks", "look", "appears", "appear", "seems", "becomes", "gets",
))
"""Words after a noun phrase that make it the subject of a new clause ("remove the kite and the dog is
sitting": the dog is no second removed object)."""

FUNCTION_WORDS: frozenset[str] = frozenset((
    "is", "are", "was", "were", "be", "been", "being", "has", "have", "had", "and", "or", "but",
    "of", "to", "for", "from", "as", "it", "he", "she", "they", "them", "him", "there", "here",
    "who", "which", "while", "where", "what", "when", "very", "that", "this", "than", "then",
    "just", "also", "only", "up", "out", "down", "away", "together", "each", "other", "s",
    "someone", "somebody", "something", "can", "will", "does", "do", "did", "if", "so", "about",
    "front", "side", "top", "bottom", "middle", "edge", "end", "left", "right", "back",
))
"""Words never guessed as unknown head nouns."""
