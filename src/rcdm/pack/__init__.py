"""The CIFAR-10 pack, in one place: the encoder recipe (`ssl`), the three RCDMs (`rcdms`), writing the bundle
(`write`), the recipe A/B (`ab`), the scorer behind the gates and the guidance choice (`evaluation`) and the
CIFAR-10 files (`cifar10`). Reading a bundle is `rcdm.bundle`, which imports none of this."""
