const React = window.React;
export default React;
export const { createContext, createElement, useContext, useEffect, useRef, useState, Fragment } = React;
