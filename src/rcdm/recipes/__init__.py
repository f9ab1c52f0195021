"""Recipes that ship with rcdm: a CIFAR-10 SSL encoder (`ssl`) and the demo pack of RCDMs (`demo_pack`)."""
