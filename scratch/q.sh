#!/bin/bash
# usage: scratch/q.sh NAME < snippet.py  -> waits for and prints the output
Q=/work/wt/adv/scratch/queue
cat > $Q/$1.tmp && mv $Q/$1.tmp $Q/$1.py
while [ ! -f $Q/$1.out ]; do sleep 0.5; done
sleep 0.2; cat $Q/$1.out
