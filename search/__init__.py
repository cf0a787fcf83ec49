"""fbnet_zoo.search: the Neural Architecture-Recipe Search (NARS) of FBNetV3."""
