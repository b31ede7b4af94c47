from medzoo.core.names import unknown_name


def test_unknown_name_suggests_the_closest_and_lists_the_known():
    assert unknown_name("model", "resnt", ["vgg", "resnet"]) == "unknown model 'resnt'; did you mean 'resnet'? known: resnet, vgg"
    assert unknown_name("key", "zzz", ["b", "a"], label="allowed", sort=False) == "unknown key 'zzz'; allowed: b, a"
    assert unknown_name("entry", "x", []) == "unknown entry 'x'; known: none"
